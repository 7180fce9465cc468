"""Per-region rules (currency, fx and VAT rates, masked columns), validated so money never goes
through float and every rate fits the declared decimal types the transforms compute in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import pyarrow as pa

from loader.config import RegionRuleConfig
from loader.errors import ConfigError

FX_RATE = pa.decimal128(18, 6)
VAT_RATE = pa.decimal128(6, 4)
_FX_SCALE = 6
_VAT_SCALE = 4


def _decimal_option(value: object, name: str, scale: int, integer_digits: int) -> Decimal:
    if isinstance(value, (float, bool)):
        raise ConfigError(f'{name}={value!r}: write it as a string (e.g. "18.25"), never a float')
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation as error:
        raise ConfigError(f"{name}={value!r} is not a decimal number: fix it in the config") from error
    if not number.is_finite() or number < 0:
        raise ConfigError(f"{name}={value!r} must be a finite number >= 0: fix it in the config")
    if number != number.quantize(Decimal(1).scaleb(-scale), rounding="ROUND_DOWN"):
        raise ConfigError(f"{name}={value!r} has more than {scale} decimal places: round it in the config")
    if number >= Decimal(10) ** integer_digits:
        raise ConfigError(f"{name}={value!r} is too large (max {integer_digits} integer digits)")
    return number


@dataclass(frozen=True)
class RegionRule:
    """Per-region rules: currency code, fx_rate (local units per USD, <= 6 decimals), vat_rate (a
    fraction, <= 4 decimals, < 1) and the columns masked for rows of that region.

    Strings and ints are accepted for the rates and converted to Decimal; floats are refused
    (ConfigError), since money never goes through float.
    """

    currency: str
    fx_rate: Decimal
    vat_rate: Decimal
    mask_columns: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.currency, str) or not self.currency:
            raise ConfigError(f"currency={self.currency!r} must be a currency code such as 'EUR'")
        fx = _decimal_option(self.fx_rate, "fx_rate", _FX_SCALE, FX_RATE.precision - _FX_SCALE)
        if fx == 0:
            raise ConfigError("fx_rate must be > 0 (local units per USD): fix it in the config")
        vat = _decimal_option(self.vat_rate, "vat_rate", _VAT_SCALE, VAT_RATE.precision - _VAT_SCALE)
        if vat >= 1:
            raise ConfigError(f"vat_rate={self.vat_rate!r} is a fraction: write 0.20 for 20%")
        if isinstance(self.mask_columns, str):
            raise ConfigError(f"mask_columns={self.mask_columns!r} must be a list of column names")
        object.__setattr__(self, "fx_rate", fx)
        object.__setattr__(self, "vat_rate", vat)
        object.__setattr__(self, "mask_columns", tuple(self.mask_columns))


#: Defaults matching configs/local.yaml (rates are illustrative, not market data).
DEFAULT_REGION_RULES: dict[str, RegionRule] = {
    "AFRICA": RegionRule("ZAR", Decimal("18.250000"), Decimal("0.1500")),
    "AMERICA": RegionRule("USD", Decimal("1.000000"), Decimal("0.0000")),
    "ASIA": RegionRule("JPY", Decimal("151.500000"), Decimal("0.1000")),
    "EUROPE": RegionRule("EUR", Decimal("0.920000"), Decimal("0.2000"), ("c_name", "c_phone")),
    "MIDDLE EAST": RegionRule("AED", Decimal("3.672500"), Decimal("0.0500")),
}


def rules_of(regions: Mapping[str, RegionRuleConfig]) -> dict[str, RegionRule]:
    """The configured `regions` block as the transforms' rules."""
    return {name: RegionRule(currency=r.currency, fx_rate=r.fx_rate, vat_rate=r.vat_rate,
                             mask_columns=tuple(r.mask))
            for name, r in regions.items()}
