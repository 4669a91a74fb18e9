"""LM judge behind an OpenAI-compatible HTTP endpoint (`/chat/completions`).

Timeout per request, retries with exponential backoff on connection errors,
timeouts, 429 and 5xx, a concurrency limit, JSON mode (`response_format`)
when the endpoint supports it, a start-up health check, and a cache keyed by
the exact request: in memory, and, with `cache_dir`, a folder shared by the
whole run (any storage, `gs://` included) that every process reads at start
and process 0 extends at each `flush` with the judgements every process made
since the last one (one file per flush: object stores cannot append). A
resumed run therefore gets the same labels, and never pays twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request

from poly_epo import distributed, storage
from poly_epo.judges.base import Judge


class HttpJudge(Judge):

  def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
               timeout: float = 60.0, max_retries: int = 3,
               backoff: float = 1.0, max_concurrency: int = 8,
               max_tokens: int = 1024, cache_dir: str | None = None,
               max_response_tokens: int = 4096, json_mode: bool = True):
    super().__init__(max_response_tokens)
    self.base_url = base_url.rstrip("/")
    self.url = self.base_url + "/chat/completions"
    # Ask for `response_format: json_object`; dropped for good the first
    # time the endpoint rejects it (HTTP 400).
    self.json_mode = json_mode
    self.model = model
    self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
    self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
    self.max_concurrency = max_concurrency
    self.max_tokens = max_tokens
    self.cache_dir = cache_dir
    self._cache: dict[str, str] = {}
    self._pending: list[dict] = []
    self._lock = threading.Lock()
    if cache_dir and storage.isdir(cache_dir):
      names = sorted(p.name for p in storage.Path(cache_dir).iterdir()
                     if p.name.endswith(".jsonl"))
      for name in names:
        text = storage.read_text(storage.join(cache_dir, name))
        for line in text.splitlines():
          try:
            rec = json.loads(line)
            self._cache[rec["key"]] = rec["reply"]
          except (json.JSONDecodeError, KeyError, TypeError):
            continue  # A torn line.

  def flush(self, name: str) -> None:
    """Gather every process's new judgements; process 0 writes them to
    `<cache_dir>/<name>.jsonl` (atomically); all processes keep them."""
    with self._lock:
      new, self._pending = self._pending, []
    merged = [r for recs in distributed.allgather_objects(new, "judge_cache")
              for r in recs]
    with self._lock:
      for r in merged:
        self._cache.setdefault(r["key"], r["reply"])
    if self.cache_dir and merged and distributed.is_main():
      storage.makedirs(self.cache_dir)
      storage.write_text(storage.join(self.cache_dir, f"{name}.jsonl"),
                         "".join(json.dumps(r) + "\n" for r in merged))

  def _body(self, prompt_text: str, max_tokens: int | None = None,
            json_mode: bool | None = None) -> bytes:
    body = {"model": self.model, "temperature": 0.0,
            "max_tokens": max_tokens or self.max_tokens,
            "messages": [{"role": "user", "content": prompt_text}]}
    if self.json_mode if json_mode is None else json_mode:
      body["response_format"] = {"type": "json_object"}
    return json.dumps(body, sort_keys=True).encode()

  def health_check(self) -> None:
    """One tiny request at start-up; a clear error naming the config field
    when the endpoint is not there."""
    try:
      self._post(self._body('Reply with {"ok": true}.', max_tokens=8),
                 retries=1)
    except Exception as e:  # noqa: BLE001 - reported with the field named.
      raise RuntimeError(
          f"config.judge.url={self.base_url!r}: the judge endpoint does not "
          f"answer ({e}); start it (an OpenAI-compatible server such as "
          "vLLM) or fix the URL / config.judge.model") from None

  def complete(self, prompt_text: str) -> str:
    body = self._body(prompt_text)
    # The key ignores JSON mode: the same question, the same judgement.
    key = hashlib.sha256(self.url.encode() + b"\0" + self._body(
        prompt_text, json_mode=False)).hexdigest()
    with self._lock:
      if key in self._cache:
        self.counts["cache_hit"] += 1
        return self._cache[key]
    reply = self._post(body)
    with self._lock:
      self._cache[key] = reply
      self._pending.append({"key": key, "reply": reply})
    return reply

  def _post(self, body: bytes, retries: int | None = None) -> str:
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    last = None
    retries = self.max_retries if retries is None else retries
    for attempt in range(retries + 1):
      if attempt:
        self.counts["retry"] += 1
        time.sleep(self.backoff * 2**(attempt - 1))
      req = urllib.request.Request(self.url, data=body, headers=headers)
      try:
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
          data = json.loads(resp.read().decode())
        return data["choices"][0]["message"]["content"]
      except urllib.error.HTTPError as e:
        last = e
        if e.code == 400 and b'"response_format"' in body:
          self.json_mode = False  # Not supported here: plain text replies.
          self.counts["json_mode_off"] += 1
          body = json.dumps({k: v for k, v in json.loads(body).items()
                             if k != "response_format"},
                            sort_keys=True).encode()
          return self._post(body, retries)
        if e.code != 429 and e.code < 500:
          break  # A client error will not fix itself.
      except (urllib.error.URLError, TimeoutError, OSError) as e:
        last = e
      except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"judge endpoint {self.url}: unexpected response "
                         f"({e!r})") from None
    raise RuntimeError(f"judge endpoint {self.url} failed after "
                       f"{retries + 1} tries: {last!r}")
