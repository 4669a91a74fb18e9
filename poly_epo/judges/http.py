"""LM judge behind an OpenAI-compatible HTTP endpoint (`/chat/completions`).

Timeout per request, retries with exponential backoff on connection errors,
timeouts, 429 and 5xx, a concurrency limit, and a cache keyed by the exact
request body (in memory, plus a JSONL file when `cache_path` is given), so a
resumed run never pays for the same judgement twice. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request

from poly_epo.judges.base import Judge


class HttpJudge(Judge):

  def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
               timeout: float = 60.0, max_retries: int = 3,
               backoff: float = 1.0, max_concurrency: int = 8,
               max_tokens: int = 512, cache_path: str | None = None):
    super().__init__()
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.model = model
    self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
    self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
    self.max_concurrency = max_concurrency
    self.max_tokens = max_tokens
    self.cache_path = cache_path
    self._cache: dict[str, str] = {}
    self._lock = threading.Lock()
    if cache_path and os.path.exists(cache_path):
      with open(cache_path) as f:
        for line in f:
          try:
            rec = json.loads(line)
            self._cache[rec["key"]] = rec["reply"]
          except (json.JSONDecodeError, KeyError):
            continue  # A torn last line from a killed run.

  def _body(self, prompt_text: str) -> bytes:
    return json.dumps({"model": self.model, "temperature": 0.0,
                       "max_tokens": self.max_tokens,
                       "messages": [{"role": "user", "content": prompt_text}]},
                      sort_keys=True).encode()

  def complete(self, prompt_text: str) -> str:
    body = self._body(prompt_text)
    key = hashlib.sha256(self.url.encode() + b"\0" + body).hexdigest()
    with self._lock:
      if key in self._cache:
        self.counts["cache_hit"] += 1
        return self._cache[key]
    reply = self._post(body)
    with self._lock:
      self._cache[key] = reply
      if self.cache_path:
        with open(self.cache_path, "a") as f:
          f.write(json.dumps({"key": key, "reply": reply}) + "\n")
    return reply

  def _post(self, body: bytes) -> str:
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    last = None
    for attempt in range(self.max_retries + 1):
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
        if e.code != 429 and e.code < 500:
          break  # A client error will not fix itself.
      except (urllib.error.URLError, TimeoutError, OSError) as e:
        last = e
      except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"judge endpoint {self.url}: unexpected response "
                         f"({e!r})") from None
    raise RuntimeError(f"judge endpoint {self.url} failed after "
                       f"{self.max_retries + 1} tries: {last!r}")
