"""The one redaction of secrets in everything the loader writes for people or machines.

Two halves, both applied by `redact`:

- a registry of secret values, filled as they become known: the password in a URL's user info and the
  values of its secret-named query parameters (`?password=...`, valid for libpq), the values substituted
  into the config from environment variables whose names look secret (`${PGPASSWORD}`), the config's
  secret fields (the Snowflake password, private key and passphrase; any key named like a password,
  token or secret), and the well-known variables of the environment (AWS and Snowflake credentials,
  PGPASSWORD). A registered value is replaced by `***` wherever it appears; one holding `@` is also
  registered piece by piece, since a URL parser cuts such a password at its `@` and shows the rest as
  the host.
- patterns, for what was never registered (a URL that does not parse, a URL from a library's message):
  the password of `user:password@` user info, and the value of a secret-named `name=value`.

The log lines, the command line's `error:` line and its other messages, `--json` output, `status`,
`doctor`, `history`, the HTML report and the metrics warning all go through `redact` (or `redact_data`
for payloads, before they are rendered: a table may wrap a secret across lines).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
#: Values shorter than this are not masked: "snow" would cut every "snowflake" out of the output (and
#: such a password is no secret anyway).
MIN_SECRET_LENGTH = 6
#: Environment variables read from the environment by the loader's libraries (never through the config).
ENVIRONMENT_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                       "SNOWFLAKE_PASSWORD", "SNOWFLAKE_PRIVATE_KEY", "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE",
                       "PGPASSWORD")

_REGISTERED: set[str] = set()

# An environment variable whose value is a secret (PGPASSWORD, AWS_SECRET_ACCESS_KEY, SNOWFLAKE_PRIVATE_KEY).
_SECRET_ENV = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL|PASSPHRASE", re.IGNORECASE)
# A config key or URL query parameter whose value is a secret: password, sslpassword, passwd, pwd, secret,
# client_secret, token, access_token, passphrase, credentials, key, api_key, private_key, secret_key.
# Not primary_key (a column) nor private_key_file (a path).
_NAME_WORDS = (r"(?:[A-Za-z0-9_.-]*?(?:pass(?:word|wd|phrase)|secret|token|credentials?|pwd"
               r"|(?:private|api|access|ssh)[_-]?key)|key)")
_SECRET_NAME = re.compile(rf"^{_NAME_WORDS}$", re.IGNORECASE)
# `password=value` in any text (a URL's query, a libpq connection string, a message).
# The value runs to `&`, `#`, a space or a quote, less a trailing `.,:;)]>` (the sentence's, not the value's);
# one masked already (`***`) is left as it is.
_NAMED_VALUE = re.compile(rf"(?<![A-Za-z0-9_.-])(?P<name>{_NAME_WORDS})=(?!\*\*\*(?:[&#\s'\".,:;)\]>]|$))"
                          r"(?P<value>'[^']*'|\"[^\"]*\"|[^&#\s'\"]*[^&#\s'\".,:;)\]>])", re.IGNORECASE)
# `user:password@` after `//` (a URL, also one with a broken scheme) or at the start of a word (a URL
# without its scheme). The password runs to the last `@` before the host: one holding `@` is masked whole.
_USER_INFO = re.compile(r"(?:(?<=//)|(?<=^)|(?<=[\s'\"(<\[=,]))(?P<user>[^\s'\"/?#:@]*):"
                        r"(?P<password>[^\s'\"/?#]+)@", re.MULTILINE)


def is_secret_env(name: str) -> bool:
    """Whether the environment variable `name` holds a secret (its value is masked once substituted)."""
    return bool(_SECRET_ENV.search(name))


def is_secret_name(name: str) -> bool:
    """Whether a config key or URL query parameter called `name` holds a secret."""
    return bool(_SECRET_NAME.match(name))


def _forms(value: str) -> set[str]:
    """The value, percent-decoded, and for one holding `@` each piece between them (a parser that cuts
    the password at its first `@` shows the rest as the host)."""
    forms = {value, unquote(value)}
    for form in list(forms):
        if "@" in form:
            forms.update(form.split("@"))
    return forms


def add_secrets(values: Iterable[str | None]) -> None:
    """Register values never to be shown (those shorter than MIN_SECRET_LENGTH are ignored)."""
    for value in values:
        if value:
            _REGISTERED.update(form for form in _forms(value) if len(form) >= MIN_SECRET_LENGTH)


def add_environment_secrets() -> None:
    """Register the values of ENVIRONMENT_SECRETS that are set."""
    add_secrets(os.environ.get(name) for name in ENVIRONMENT_SECRETS)


def url_secrets(url: str) -> list[str]:
    """The secrets in a URL (or something meant to be one, parseable or not): the password of its user
    info and the values of its secret-named query parameters."""
    found = [m.group("password") for m in _USER_INFO.finditer(url)]
    found += [m.group("value").strip("'\"") for m in _NAMED_VALUE.finditer(url)]
    try:
        parts = urlsplit(url)
        found.append(parts.password or "")
        found += [value for name, value in parse_qsl(parts.query, keep_blank_values=True)
                  if is_secret_name(name)]
    except ValueError:  # not a URL: the patterns above found what there is
        pass
    return [value for value in found if value]


def config_secrets(node: Any) -> list[str]:
    """The secrets in a parsed config (a mapping as YAML gives it, or a model dumped to one): the values of
    secret-named keys, and the secrets of every URL among the values."""
    found: list[str] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(value, str) and isinstance(key, str) and is_secret_name(key):
                found.append(value)
            found += config_secrets(value)
    elif isinstance(node, list | tuple):
        for item in node:
            found += config_secrets(item)
    elif isinstance(node, str):
        found += url_secrets(node)
    return found


def register_config(node: Any) -> None:
    add_secrets(config_secrets(node))


def _mask_user_info(match: re.Match[str]) -> str:
    return f"{match.group('user')}:{MASK}@"


def _mask_named_value(match: re.Match[str]) -> str:
    return f"{match.group('name')}={MASK}"


def redact(text: str) -> str:
    """`text` with every registered secret, every user info password and every secret-named value
    replaced by `***`."""
    for secret in sorted(_REGISTERED, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    if "@" in text:
        text = _USER_INFO.sub(_mask_user_info, text)
    if "=" in text:
        text = _NAMED_VALUE.sub(_mask_named_value, text)
    return text


def redact_data(value: Any) -> Any:
    """A JSON-like payload with `redact` applied to every string in it (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact_data(key): redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


def clear() -> None:
    """Forget every registered secret (tests)."""
    _REGISTERED.clear()
