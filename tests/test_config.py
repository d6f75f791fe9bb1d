from __future__ import annotations

import pytest

from retrieval.config import Settings
from retrieval.errors import ReadnextError


def test_defaults_toml_env_precedence(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        'seed = 7\n[fusion]\nrrf_k = 10.0\nweights = { content = 2.0, cf = 1.0 }\n[llm]\nbackend = "http://127.0.0.1:9/v1"\n'
    )
    s = Settings.load(home=tmp_path, env={})
    assert (
        s.seed == 7
        and s.fusion.rrf_k == 10.0
        and s.fusion.weights["content"] == 2.0
        and s.llm.backend == "http://127.0.0.1:9/v1"
    )
    s = Settings.load(
        home=tmp_path,
        env={
            "READNEXT_LLM_BACKEND": "none",
            "READNEXT_FUSION_RRF_K": "30",
            "READNEXT_PROFILE_HALF_LIFE_DAYS": "90",
            "READNEXT_SEED": "3",
            "READNEXT_FUSION_WEIGHTS": '{"content": 1.5}',
        },
    )
    assert (
        s.llm.backend == "none"
        and s.fusion.rrf_k == 30.0
        and s.profile.half_life_days == 90.0
        and s.seed == 3
    )
    assert s.fusion.weights == {"content": 1.5}
    assert Settings.load(env={}).fusion.rrf_k == 60.0


def test_bad_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.toml").write_text("[fusion]\nrrf_kk = 3\n")
    with pytest.raises(ReadnextError, match="fusion.rrf_kk"):
        Settings.load(home=tmp_path, env={})
    with pytest.raises(ReadnextError, match="READNEXT_CHAT_PORT"):
        Settings.load(env={"READNEXT_CHAT_PORT": "eighty"})
    (tmp_path / "config.toml").write_text("[fusion\n")
    with pytest.raises(ReadnextError, match="invalid TOML"):
        Settings.load(home=tmp_path, env={})


def test_fusion_and_cf_settings_are_validated_and_reach_the_sources(tmp_path):
    s = Settings.load(
        env={
            "READNEXT_FUSION_METHOD": "rrf",
            "READNEXT_CF_HALF_LIFE_EVENTS": "0",
            "READNEXT_SEQUENCE_LAST": "3",
        }
    )
    assert (s.fusion.method, s.cf.half_life_events, s.sequence.last) == ("rrf", 0.0, 3)
    with pytest.raises(ReadnextError, match="fusion.method"):
        Settings.load(env={"READNEXT_FUSION_METHOD": "borda"})
    with pytest.raises(ReadnextError, match="unknown source.*contnet"):
        Settings.load(env={"READNEXT_FUSION_WEIGHTS": '{"contnet": 1.0}'})
    with pytest.raises(ReadnextError, match="at least one > 0"):
        Settings.load(env={"READNEXT_FUSION_WEIGHTS": '{"cf": 0}'})
    (tmp_path / "config.toml").write_text("[cf]\nhalf_life_events = -2.0\n")
    with pytest.raises(ReadnextError, match="config.toml: cf.half_life_events"):
        Settings.load(home=tmp_path, env={})


def test_cold_slice_weights_come_from_toml_and_env_and_bad_ones_name_the_file(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[fusion]\ncold_weights = { readers = 0.5, sasrec = 0.0 }\ncold_below = 6\n")
    s = Settings.load(home=tmp_path, env={})
    assert s.fusion.cold_weights == {"readers": 0.5, "sasrec": 0.0} and s.fusion.cold_below == 6
    assert s.fusion.slice_weights(True)["readers"] == 0.5
    assert s.fusion.slice_weights(False).get("readers", 0.0) == 0.0
    s = Settings.load(
        home=tmp_path,
        env={"READNEXT_FUSION_COLD_WEIGHTS": '{"readers": 2.0}', "READNEXT_FUSION_COLD_BELOW": "3"},
    )
    assert s.fusion.cold_weights == {"readers": 2.0} and s.fusion.cold_below == 3
    assert Settings.load(env={}).fusion.cold_weights == {}  # default: one weight set for all
    cfg.write_text("[fusion]\ncold_weights = { bogus = 1.0 }\n")
    with pytest.raises(ReadnextError, match=r"config.toml: .*cold_weights names unknown source"):
        Settings.load(home=tmp_path, env={})
