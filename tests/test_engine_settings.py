"""poly_epo.engine.settings: every "auto" resolved once for the target
platform by the kernel registry's rules, invalid combinations refused in
one line naming the fields, and a run config read whole."""

import pytest

from poly_epo import config_checks, config_defaults
from poly_epo.engine import kernels, settings


@pytest.mark.parametrize("platform,attention,engine,want", [
    ("tpu", "auto", "static", ("paged", "tpu_paged")),
    ("tpu", "tpu_paged", "static", ("paged", "tpu_paged")),
    ("tpu", "window", "static", ("contiguous", "window")),
    ("gpu", "auto", "continuous", ("contiguous", "pallas")),
    # Lock-step rows on CPU: each prompt's cache read once for its samples.
    ("cpu", "auto", "static", ("prefix", "prefix")),
    ("cpu", "window", "static", ("contiguous", "window")),
    ("gpu", "prefix", "static", ("prefix", "prefix")),
    # Refilled slots on CPU read the whole cache.
    ("cpu", "auto", "continuous", ("contiguous", "full")),
    # The TPU kernel is paged: "auto" follows it (interpreted on CPU).
    ("cpu", "tpu_paged", "continuous", ("paged", "tpu_paged"))])
def test_auto_is_a_rule_over_the_registry(platform, attention, engine, want):
  assert kernels.resolve(attention, "auto", platform, engine) == want
  s = settings.make(num_samples=2, max_new_tokens=4, platform=platform,
                    attention=attention, cache="auto", engine=engine)
  assert (s.cache, s.attention) == want
  assert "auto" not in (s.cache, s.attention)


def test_defaults_per_platform():
  cpu = settings.make(num_samples=2, max_new_tokens=4, platform="cpu",
                      engine="continuous")
  tpu = settings.make(num_samples=2, max_new_tokens=4, platform="tpu",
                      engine="continuous")
  assert (cpu.block, tpu.block) == (32, 128)
  assert cpu.narrow and not tpu.narrow  # "auto" narrows on CPU only.
  assert settings.make(num_samples=2, max_new_tokens=4, platform="tpu",
                       narrow="on").narrow


@pytest.mark.parametrize("kw,field", [
    (dict(cache="contiguous", attention="tpu_paged"), "rollout.cache"),
    (dict(cache="paged", attention="window", platform="tpu"),
     "rollout.attention='window'.*does not run on tpu"),
    (dict(attention="tpu_paged", cache="auto", platform="gpu"),
     "rollout.attention='tpu_paged'.*gpu"),
    (dict(attention="pallas", platform="tpu"), "rollout.attention='pallas'"),
    (dict(attention="flash"), "rollout.attention='flash'"),
    (dict(cache="virtual"), "rollout.cache='virtual'"),
    (dict(engine="paged"), "rollout.engine='paged'"),
    (dict(cache="prefix", engine="continuous"), "rollout.cache='prefix'"),
    (dict(attention="prefix", engine="continuous"), "rollout.cache='prefix'"),
    (dict(cache="prefix", attention="window"), "'window' reads a 'contiguous'"),
    (dict(narrow="yes"), "rollout.narrow"),
    (dict(refill=0), "rollout.refill"),
    (dict(slots=-1), "rollout.slots"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature")])
def test_bad_settings_name_the_field(kw, field):
  with pytest.raises(ValueError, match=field):
    settings.make(**{"num_samples": 2, "max_new_tokens": 4,
                     "platform": "cpu", **kw})


def test_the_config_check_resolves_for_the_target_platform():
  """The recipe's defaults (cache and attention "auto") with the TPU
  kernel named: on a GPU the check refuses it before anything runs (it
  used to fail at the first training rollout); on TPU it is the paged
  cache."""
  cfg = config_defaults.base_config()
  cfg.rollout.attention = "tpu_paged"
  with pytest.raises(ValueError, match=r"config.rollout.attention="
                     r"'tpu_paged'.*gpu"):
    config_checks.check_config(cfg, n_devices=8, platform="gpu")
  s = settings.from_config(cfg, "tpu")
  assert (s.cache, s.attention) == ("paged", "tpu_paged")
  # The run config's sampling rule and rollout fields are all read.
  cfg.top_k, cfg.rollout.slots = 5, 64
  s = settings.from_config(cfg, "tpu", eos_id=7)
  assert (s.sampling.top_k, s.slots, s.eos_id, s.num_samples) == (
      5, 64, 7, cfg.num_samples)
  assert s.replace(top_k=0).sampling.top_k == 0
