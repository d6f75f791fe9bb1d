"""Adapters that let other frameworks use readnext (LangChain today)."""
