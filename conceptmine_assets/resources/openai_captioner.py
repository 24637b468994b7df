"""The remote VLM captioner: any OpenAI-compatible chat-completions server (vLLM, TGI, a hosted
API) through the maintained ``openai`` client.

The client's own retries are off (``max_retries=0``): this module retries, so that every crop
records how many attempts it took and an unusable answer is re-asked within the same budget.
A 429/503 answer's ``Retry-After`` (seconds or an HTTP date) is honoured; otherwise the wait is
exponential backoff.
"""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from pydantic import Field

from conceptmine_assets.lib.captioning import CaptionRequest, CaptionResult, answer_result, failed_result
from conceptmine_assets.lib.identity import ModelIdentity, model_identity
from conceptmine_assets.lib.versions import require
from conceptmine_assets.resources.captioner import AnswerError, VLMCaptioner, decode_image

_RETRYABLE_STATUS = {408, 409, 425, 429}  # and every 5xx


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds to wait: ``"3"``, ``"0.5"`` or an HTTP date; None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OpenAICaptioner(VLMCaptioner):
    """A VLM behind an OpenAI-compatible server (e.g. ``deploy/vllm.yaml``)."""

    backend: ClassVar[str] = "openai"

    model: str = Field(description="the served model name (vLLM --served-model-name)")
    base_url: str = Field(default="http://127.0.0.1:8000/v1", description="the server's OpenAI API root")
    api_key: str | None = Field(default=None, description="bearer token; None: no Authorization header (keyless)")
    timeout_s: float = Field(default=60.0, gt=0, description="seconds to wait for one answer")
    max_attempts: int = Field(default=3, ge=1, description="tries per crop, the first one included")
    backoff_s: float = Field(default=1.0, ge=0, description="wait before retry k: backoff_s * 2**(k-1), capped")
    backoff_max_s: float = Field(default=30.0, ge=0, description="cap of the exponential backoff")
    retry_after_max_s: float = Field(default=300.0, ge=0, description="cap of a server's Retry-After wait")
    concurrency: int = Field(default=4, ge=1, description="parallel requests")

    def identity(self) -> ModelIdentity:
        return model_identity(f"openai:{self.model}", {**self.prompt_settings(), "base_url": self.base_url})

    def client(self) -> Any:
        """An ``openai.OpenAI`` client for this server (requests omit Authorization without a key)."""
        require("openai")
        import openai

        return openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key or "keyless", timeout=self.timeout_s, max_retries=0
        )

    def answer(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        client = self.client()
        workers = min(self.concurrency, len(requests))
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="captioner") as pool:
                return list(pool.map(lambda r: self._one(client, r), requests))
        finally:
            client.close()

    def _messages(self, jpeg: bytes, class_name: str) -> list[dict]:
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": self.prompt_for(class_name)}]
        return [{"role": "user", "content": content}]

    def _request(self, client: Any, messages: list[dict]) -> str:
        """One chat-completions call; the answer text, or :class:`AnswerError`."""
        import openai

        url = self.base_url.rstrip("/") + "/chat/completions"
        try:
            response = client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=self.new_tokens(),
                temperature=0.0,
                extra_headers=None if self.api_key else {"Authorization": openai.Omit()},  # keyless server
            )
        except openai.APITimeoutError as exc:
            raise AnswerError(f"no answer from {url} within {self.timeout_s}s: {exc!r}") from exc
        except openai.APIConnectionError as exc:
            raise AnswerError(f"cannot reach {url}: {exc.__cause__ or exc!r}") from exc
        except openai.APIStatusError as exc:
            code = exc.status_code
            retry = code in _RETRYABLE_STATUS or code >= 500
            wait = retry_after_seconds(exc.response.headers.get("retry-after"))
            raise AnswerError(f"HTTP {code} from {url}: {exc.message}", retryable=retry, retry_after_s=wait) from exc
        except (openai.APIError, ValueError) as exc:  # a body that is not the expected JSON
            raise AnswerError(f"malformed response from {url}: {exc}") from exc
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as exc:
            raise AnswerError(f"malformed response from {url}: {str(response)[:200]}") from exc
        if not isinstance(content, str):
            raise AnswerError(f"malformed response from {url}: content is {type(content).__name__}")
        return content

    def _wait(self, attempt: int, retry_after_s: float | None) -> None:
        """Sleep before try ``attempt`` (2, 3, ...): the server's Retry-After if it sent one, else backoff."""
        backoff = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 2))
        time.sleep(backoff if retry_after_s is None else max(backoff, min(retry_after_s, self.retry_after_max_s)))

    def _one(self, client: Any, r: CaptionRequest) -> CaptionResult:
        started = time.perf_counter()
        try:
            messages = self._messages(decode_image_bytes(r.image_jpeg), r.class_name)
        except AnswerError as exc:
            return failed_result(r.class_name, str(exc), 1, time.perf_counter() - started)
        error, raw, retry_after = "no attempt made", None, None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self._wait(attempt, retry_after)
            try:
                raw = self._request(client, messages)
            except AnswerError as exc:
                error, retry_after = str(exc), exc.retry_after_s
                if not exc.retryable:
                    return failed_result(r.class_name, error, attempt, time.perf_counter() - started)
                continue
            retry_after = None
            result = answer_result(raw, self.prompt_style, self.classes, r.class_name, attempt, time.perf_counter() - started)
            if result.status == "ok":
                return result
            error = result.error or error
        return failed_result(r.class_name, error, self.max_attempts, time.perf_counter() - started, raw)


def decode_image_bytes(jpeg: bytes | None) -> bytes:
    """The crop's JPEG bytes after checking that they decode (so a bad crop is not sent)."""
    decode_image(jpeg)
    return jpeg  # type: ignore[return-value]
