"""Retries with tenacity: only errors marked Transient are retried, with exponential backoff and
jitter, bounded in attempts and in total time. Every retry is logged with its attempt and reason.
Each retried step must be idempotent (every sink write and the checkpoint commit are)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from loader.config import RetryConfig
from loader.errors import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


def call_with_retries(step: str, policy: RetryConfig, func: Callable[[], T], *,
                      retry_if: Callable[[BaseException], bool] = is_transient) -> T:
    """Run `func`; on a transient error (or one `retry_if` picks among them, for a step that retries only
    some of its faults itself) wait and try again, up to the policy's limits."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s: attempt %d of %d failed (%s); retrying in %.1fs",
                    step, state.attempt_number, policy.attempts, error, wait)

    retrying = Retrying(
        retry=retry_if_exception(lambda error: is_transient(error) and retry_if(error)),
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total.total_seconds()),
        wait=wait_exponential_jitter(initial=policy.initial_wait.total_seconds(),
                                     max=policy.max_wait.total_seconds()),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(func)
