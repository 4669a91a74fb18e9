"""poly_epo.judges: rubric parsing, failure rules, the HTTP judge against a
local server, and the in-process judge's plumbing on a tiny random model."""

import http.server
import json
import re
import threading
import time

import pytest

from poly_epo import judges
from poly_epo.set_rl import DEGENERATE


def test_parse_labels():
  assert judges.parse_labels('{"labels": ["A", "B", "A", "DEGENERATE"]}',
                             4) == [0, 1, 0, DEGENERATE]
  assert judges.parse_labels('Sure! {"labels": [2, 2, 5]} done', 3) == \
      [0, 0, 1]
  with pytest.raises(judges.JudgeCountError):
    judges.parse_labels('{"labels": ["A"]}', 2)
  with pytest.raises(judges.JudgeFormatError):
    judges.parse_labels("no json here", 2)
  with pytest.raises(judges.JudgeFormatError):
    judges.parse_labels('{"labels": [null, "A"]}', 2)
  prompt = judges.build_prompt("2+2?", ["4", "four"])
  assert "Attempt 2:\nfour" in prompt and "DEGENERATE" in prompt
  assert "summary" in prompt


def test_parse_attempts_with_summaries_and_thinking():
  reply = ('<think>attempt 2 redoes 1</think> {"attempts": ['
           '{"summary": "factor", "strategy": "A"}, '
           '{"summary": "factor again", "strategy": "A"}, '
           '{"summary": "formula", "strategy": "B"}, '
           '{"summary": "loops", "strategy": "degenerate"}]}')
  assert judges.parse_labels(reply, 4) == [0, 0, 1, DEGENERATE]
  with pytest.raises(judges.JudgeCountError):
    judges.parse_labels('{"attempts": [{"strategy": "A"}]}', 2)
  with pytest.raises(judges.JudgeFormatError):
    judges.parse_labels('{"attempts": [{"summary": "x"}, {"strategy": "A"}]}',
                        2)


def test_long_responses_keep_head_and_tail():
  from poly_epo.judges.rubric import head_and_tail
  text = "start " + "x" * 10_000 + " loop loop loop"
  cut = head_and_tail(text, 200)
  assert cut.startswith("start ") and cut.endswith("loop loop loop")
  assert "characters cut from the middle" in cut and len(cut) < 300
  assert head_and_tail("short", 200) == "short"
  j = judges.Judge(max_response_tokens=50)
  assert j.prepare(text).endswith("loop loop loop")
  assert len(j.prepare(text)) < 300


class _Handler(http.server.BaseHTTPRequestHandler):
  script: list = []  # Replies, consumed one per request.
  requests: list = []

  def do_POST(self):  # noqa: N802
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    _Handler.requests.append(body)
    mode = _Handler.script.pop(0) if _Handler.script else "good"
    if mode == "no_json" and "response_format" in body:
      self.send_response(400)  # An endpoint without JSON mode.
      self.end_headers()
      self.wfile.write(b'{"error": "response_format not supported"}')
      return
    found = re.search(r"There are (\d+) attempts",
                      body["messages"][0]["content"])
    n = int(found.group(1)) if found else 0  # 0: the health check.
    mode = "good" if mode == "no_json" else mode
    if mode == "slow":
      time.sleep(1.0)
      mode = "good"
    if mode == "500":
      self.send_response(500)
      self.end_headers()
      return
    content = {"good": json.dumps({"labels": ["A", "B"] * (n // 2)
                                   + ["A"] * (n % 2)}),
               "malformed": "{labels: [A, B",
               "wrong_count": json.dumps({"labels": ["A"] * (n + 1)})}[mode]
    data = json.dumps({"choices": [{"message": {"content": content}}]})
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.end_headers()
    self.wfile.write(data.encode())

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def server():
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
  srv.shutdown()


def _judge(url, **kw):
  kw.setdefault("timeout", 0.5)
  kw.setdefault("backoff", 0.01)
  return judges.HttpJudge(url, "judge-4b", **kw)


def test_http_good_and_cache(server, tmp_path):
  _Handler.script[:] = ["good"]
  cache = str(tmp_path / "judge_cache")
  j = _judge(server, cache_dir=cache)
  res = j.cluster("p", ["a", "b", "c", "d"])
  assert res == judges.JudgeResult([0, 1, 0, 1], True, "ok")
  n_requests = len(_Handler.requests)
  assert j.cluster("p", ["a", "b", "c", "d"]).labels == [0, 1, 0, 1]
  assert len(_Handler.requests) == n_requests  # Served from the cache.
  j.flush("step_0000000")
  again = _judge(server, cache_dir=cache)  # A resumed run reads the files.
  assert again.cluster("p", ["a", "b", "c", "d"]).status == "ok"
  assert len(_Handler.requests) == n_requests
  assert again.counts["cache_hit"] == 1


def test_http_malformed_means_all_distinct(server):
  _Handler.script[:] = ["malformed"]
  j = _judge(server)
  res = j.cluster("q1", ["a", "b", "c"])
  assert res == judges.JudgeResult([0, 1, 2], True, "failed")
  assert j.counts["failed"] == 1


def test_http_wrong_count_invalidates_prompt(server):
  _Handler.script[:] = ["wrong_count"]
  j = _judge(server)
  res = j.cluster("q2", ["a", "b", "c"])
  assert not res.valid and res.status == "wrong_count"
  assert j.counts["wrong_count"] == 1


def test_http_timeout_then_failure_rule(server):
  _Handler.script[:] = ["slow", "slow"]
  j = _judge(server, timeout=0.2, max_retries=1)
  t0 = time.perf_counter()
  res = j.cluster("q3", ["a", "b"])
  assert res.status == "failed" and res.labels == [0, 1]
  assert j.counts["retry"] == 1 and time.perf_counter() - t0 < 3


def test_http_500_is_retried(server):
  _Handler.script[:] = ["500", "500", "good"]
  j = _judge(server, max_retries=3)
  res = j.cluster("q4", ["a", "b"])
  assert res.status == "ok" and j.counts["retry"] == 2


def test_http_json_mode_falls_back_and_health_check(server):
  _Handler.script[:] = ["no_json"]
  j = _judge(server)
  assert j.json_mode
  res = j.cluster("q5", ["a", "b"])
  assert res.status == "ok" and not j.json_mode
  assert "response_format" not in _Handler.requests[-1]
  _Handler.script[:] = []
  _judge(server).health_check()  # Answers: no error.
  down = judges.HttpJudge("http://127.0.0.1:9/v1", "m", timeout=0.2,
                          backoff=0.01)
  with pytest.raises(RuntimeError, match=r"config\.judge\.url"):
    down.health_check()


def test_judge_watch_stops_a_run_whose_judge_keeps_failing():
  import numpy as np
  from poly_epo.judges.factory import JudgeWatch
  w = JudgeWatch(0.5, window=3)
  row = w.step(np.array([3.0, 1.0, 0.0]), 0)
  assert row["judge/failed_fraction"] == 0.25
  w.check(0)
  w.step(np.array([0.0, 4.0, 0.0]), 1)
  w.check(1)  # (0.25 + 1) / 2 > 0.5, but the window is not full yet.
  w.step(np.array([0.0, 3.0, 1.0]), 2)
  with pytest.raises(RuntimeError, match="max_failed_fraction"):
    w.check(2)  # Over the last 3: (0.25 + 1 + 0.75) / 3 > 0.5.


def test_http_concurrency(server):
  _Handler.script[:] = []
  j = _judge(server, max_concurrency=4)
  results = j.cluster_many([f"q{i}" for i in range(8)], [["a", "b"]] * 8)
  assert all(r.status == "ok" for r in results)


def test_in_process_judge_plumbing(tmp_path):
  from poly_epo.models import init_model, preset, save_hf
  from poly_epo.tokenizer import char_tokenizer
  tok = char_tokenizer()
  model = init_model(preset("tiny", vocab_size=len(tok), model_type="qwen3"))
  save_hf(model, str(tmp_path), tokenizer=tok)
  j = judges.InProcessJudge(str(tmp_path), max_new_tokens=8,
                            max_response_tokens=64)
  j.check_budget(3)  # 4096 positions hold 3 x 64 tokens and the rubric.
  with pytest.raises(ValueError, match=r"config\.judge\.max_response_tokens"):
    j.check_budget(80)
  long = "a" * 500 + "z" * 500
  assert j.prepare(long).startswith("a") and j.prepare(long).endswith("z")
  reply = j.complete("hello")
  assert isinstance(reply, str)
  res = j.cluster("2+2?", ["4", "four", "5"])
  # A random model writes nonsense: the failure rule applies, no crash.
  assert res.status in ("failed", "wrong_count", "ok")
  assert len(res.labels) == 3
  assert sum(j.counts.values()) == 1


def test_training_stops_loudly_when_the_judge_goes_down(server, base,
                                                       tmp_path):
  import json as json_
  from poly_epo import trainer
  from test_trainer import _config
  cfg = _config(workdir=str(tmp_path / "run"), base_policy=base, steps=6,
                prompts_per_step=4, eval_prompts=0, ckpt_every=1,
                **{"judge.kind": "http", "judge.url": server,
                   "judge.model": "judge-4b", "judge.timeout": 0.5,
                   "judge.failure_window": 2})
  # Health check and step 0 answered; then every request fails (HTTP 500).
  _Handler.script[:] = ["good"] * 5 + ["500"] * 400
  with pytest.raises(RuntimeError, match="judge failed on 100% .* resumes"):
    trainer.train(cfg)
  rows = [json_.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["train/judge/failed_fraction"] for r in rows] == [0.0, 1.0, 1.0]
  _Handler.script[:] = []
  cfg.judge.url = "http://127.0.0.1:9/v1"  # Nothing listens there.
  with pytest.raises(RuntimeError, match=r"config\.judge\.url"):
    trainer.train(cfg)


def test_failures_keep_their_first_reason_per_step():
  class Scripted(judges.Judge):
    def __init__(self, replies):
      super().__init__()
      self.replies = list(replies)

    def complete(self, prompt_text):
      r = self.replies.pop(0)
      if isinstance(r, Exception):
        raise r
      return r

  j = Scripted([RuntimeError("out of memory in the judge"), "gibberish",
                '{"labels": ["A", "B"]}', RuntimeError("second error")])
  for _ in range(4):
    j.cluster("q", ["a", "b", "c"])
  reasons = j.take_reasons()
  assert reasons["failed"].startswith("RuntimeError: out of memory")
  assert reasons["wrong_count"].startswith("judge gave 2 labels for 3")
  assert """reply: '{"labels": ["A", "B"]}'""" in reasons["wrong_count"]
  assert j.counts["failed"] == 3 and j.counts["wrong_count"] == 1
  assert j.take_reasons() == {}  # Taken: the next step starts empty.
