"""Typed configuration, read once at the entry point and passed down explicitly.

Every field is read from an environment variable whose name is part of the public contract
(see the README's configuration table). ``load_settings`` turns a validation failure into one
line that names the variable and what it accepts.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Period = Literal["day", "week", "month"]
ProviderName = Literal["local", "openai"]


def _env(name: str, **kwargs):
    return Field(validation_alias=AliasChoices(name), **kwargs)


class ConfigError(ValueError):
    """A configuration value is unusable; the message is one line fit for a terminal."""


class Settings(BaseSettings):
    """Everything reelbot reads from its environment."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, populate_by_name=False)

    openai_api_key: SecretStr | None = _env("OPENAI_API_KEY", default=None)
    openai_base_url: str = _env("OPENAI_BASE_URL", default="https://api.openai.com/v1")
    provider: ProviderName | None = _env("REELBOT_PROVIDER", default=None)
    data_dir: Path = _env("REELBOT_DATA_DIR", default=Path("reelbot-data"))
    user_budget_usd: Decimal = _env("REELBOT_USER_BUDGET_USD", default=Decimal("10"), ge=0, le=1_000_000)
    budget_period: Period = _env("REELBOT_BUDGET_PERIOD", default="month")
    max_jobs_per_user: int = _env("REELBOT_MAX_JOBS_PER_USER", default=2, ge=1, le=1000)
    max_jobs_in_flight: int = _env("REELBOT_MAX_JOBS_IN_FLIGHT", default=4, ge=1, le=10_000)
    # Replaced by the model catalog: set, they stop start-up with a line saying what to do instead.
    allow_long_clips: str | None = _env("REELBOT_ALLOW_LONG_CLIPS", default=None)
    allow_1080p: str | None = _env("REELBOT_ALLOW_1080P", default=None)
    admin_ids: Annotated[tuple[str, ...], NoDecode] = _env("REELBOT_ADMIN_IDS", default=())
    render_deadline_s: float = _env("REELBOT_RENDER_DEADLINE_S", default=1200.0, gt=0)
    consent_timeout_s: float = _env("REELBOT_CONSENT_TIMEOUT_S", default=3600.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _env("REELBOT_LOG_LEVEL", default="INFO")

    slack_bot_token: SecretStr | None = _env("SLACK_BOT_TOKEN", default=None)
    slack_app_token: SecretStr | None = _env("SLACK_APP_TOKEN", default=None)
    slack_signing_secret: SecretStr | None = _env("SLACK_SIGNING_SECRET", default=None)
    slack_api_url: str = _env("SLACK_API_URL", default="https://slack.com/api/")
    http_port: int = _env("REELBOT_HTTP_PORT", default=3000, ge=1, le=65535)

    discord_bot_token: SecretStr | None = _env("DISCORD_BOT_TOKEN", default=None)
    discord_api_url: str = _env("DISCORD_API_URL", default="https://discord.com/api/v10")
    discord_gateway_url: str = _env("DISCORD_GATEWAY_URL", default="wss://gateway.discord.gg/")
    discord_guild_id: int | None = _env("DISCORD_GUILD_ID", default=None)

    # The model catalog and the providers that serve it (several at once, one key each).
    models_file: Path | None = _env("REELBOT_MODELS_FILE", default=None)
    default_model: str | None = _env("REELBOT_DEFAULT_MODEL", default=None)
    fal_key: SecretStr | None = _env("FAL_KEY", default=None)
    fal_queue_url: str = _env("FAL_QUEUE_URL", default="https://queue.fal.run")
    fal_jwks_url: str = _env("FAL_JWKS_URL", default="https://rest.alpha.fal.ai/.well-known/jwks.json")
    fal_user_id: str | None = _env("FAL_USER_ID", default=None)
    openrouter_api_key: SecretStr | None = _env("OPENROUTER_API_KEY", default=None)
    openrouter_base_url: str = _env("OPENROUTER_BASE_URL", default="https://openrouter.ai/api/v1")
    openrouter_webhook_secret: SecretStr | None = _env("OPENROUTER_WEBHOOK_SECRET", default=None)
    # Where providers can reach reelbot's webhooks (https://bot.example.com); unset: poll only.
    public_url: str | None = _env("REELBOT_PUBLIC_URL", default=None)

    # How jobs end when something keeps going wrong.
    max_attempts: int = _env("REELBOT_MAX_ATTEMPTS", default=5, ge=1, le=100)
    undelivered_ttl_s: float = _env("REELBOT_UNDELIVERED_TTL_S", default=7 * 24 * 3600.0, gt=0)

    # Who must confirm a cameo belongs to the person registering it (see the README's cameo section).
    cameo_admin_verify: Literal["never", "unverified", "always"] = _env(
        "REELBOT_CAMEO_ADMIN_VERIFY", default="unverified"
    )

    @field_validator("openai_api_key", "fal_key", "openrouter_api_key", "openrouter_webhook_secret", mode="before")
    @classmethod
    def _key_or_unset(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must not be empty; unset it to turn that provider off")
            return value.strip()
        return value

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator(
        "openai_base_url",
        "slack_api_url",
        "discord_api_url",
        "discord_gateway_url",
        "fal_queue_url",
        "fal_jwks_url",
        "openrouter_base_url",
        "public_url",
    )
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("an http(s):// or ws(s):// URL")
        return value

    @field_validator("user_budget_usd")
    @classmethod
    def _whole_cents(cls, value: Decimal) -> Decimal:
        """Budgets are whole cents, like ``/video admin budget``: a fraction of a cent is a typo, not a limit."""
        if not value.is_finite() or value != value.quantize(Decimal("0.01")):
            raise ValueError("must be whole cents, such as 10 or 2.50")
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_given(cls, value: object) -> object:
        """An empty value would silently mean the current directory; unset the variable for the default."""
        if isinstance(value, str | Path) and not str(value).strip():
            raise ValueError("must name a folder; leave it unset to use ./reelbot-data")
        return value

    @field_validator("provider", "budget_period", "log_level", mode="before")
    @classmethod
    def _lower_or_upper(cls, value: object, info) -> object:
        if isinstance(value, str):
            return value.upper() if info.field_name == "log_level" else value.strip().lower()
        return value

    @model_validator(mode="after")
    def _retired_switches(self) -> Settings:
        for name, value in (
            ("REELBOT_ALLOW_LONG_CLIPS", self.allow_long_clips),
            ("REELBOT_ALLOW_1080P", self.allow_1080p),
        ):
            if value is not None:
                raise ValueError(
                    f"{name} is no longer used: each model's lengths and resolutions are in the model catalog; "
                    "change them with REELBOT_MODELS_FILE (see the README)"
                )
        return self

    @model_validator(mode="after")
    def _provider_needs_key(self) -> Settings:
        if self.provider == "openai" and self.openai_api_key is None:
            raise ValueError("REELBOT_PROVIDER=openai needs OPENAI_API_KEY")
        return self

    @property
    def provider_names(self) -> tuple[str, ...]:
        """The providers to configure, in the order their keys are checked: every one with a key.

        ``REELBOT_PROVIDER=local`` keeps everything on the local renderer; with no key at all the
        local renderer stands in for every catalog model.
        """
        if self.provider == "local":
            return ("local",)
        names = []
        if self.fal_key is not None:
            names.append("fal")
        if self.openrouter_api_key is not None:
            names.append("openrouter")
        if self.openai_api_key is not None:
            names.append("openai")
        return tuple(names) or ("local",)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "reelbot.db"

    @property
    def clips_dir(self) -> Path:
        return self.data_dir / "clips"

    @property
    def slack_configured(self) -> bool:
        return self.slack_bot_token is not None and (
            self.slack_app_token is not None or self.slack_signing_secret is not None
        )

    @property
    def discord_configured(self) -> bool:
        return self.discord_bot_token is not None

    @property
    def incomplete_platforms(self) -> tuple[str, ...]:
        """One line for each chat platform some of whose variables are set but that cannot start."""
        problems = []
        if self.slack_bot_token is None and (self.slack_app_token is not None or self.slack_signing_secret is not None):
            given = "SLACK_APP_TOKEN" if self.slack_app_token is not None else "SLACK_SIGNING_SECRET"
            problems.append(f"Slack: {given} is set but SLACK_BOT_TOKEN is missing.")
        elif self.slack_bot_token is not None and not self.slack_configured:
            problems.append(
                "Slack: SLACK_BOT_TOKEN is set but SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET "
                "(HTTP mode) is missing."
            )
        if self.discord_bot_token is None and self.discord_guild_id is not None:
            problems.append("Discord: DISCORD_GUILD_ID is set but DISCORD_BOT_TOKEN is missing.")
        return tuple(problems)


_ACCEPTS = {
    "literal_error": None,
    "bool_parsing": "true or false",
    "int_parsing": "a whole number",
    "decimal_parsing": "a number",
    "float_parsing": "a number",
}


def _describe(error: dict) -> str:
    names = [str(loc) for loc in error.get("loc", ()) if isinstance(loc, str)]
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    if not names:
        return message
    field = Settings.model_fields.get(names[0])
    variable = names[0]
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        variable = str(field.validation_alias.choices[0])
    accepts = _ACCEPTS.get(error.get("type", ""))
    if error.get("type") == "literal_error":
        message = message.replace("Input should be", "must be")
    elif accepts:
        message = f"must be {accepts}"
    elif error.get("type", "").startswith(("greater", "less")):
        message = "must be " + message.removeprefix("Input should be ")
    else:
        message = message if message.startswith("must") else f"must be {message}"
    got = error.get("input")
    shown = (
        f" (got {got!r})"
        if isinstance(got, str | int | float) and not str(variable).endswith(("KEY", "TOKEN", "SECRET"))
        else ""
    )
    return f"{variable}: {message}{shown}"


def load_settings(**overrides: object) -> Settings:
    """Reads the environment once.

    Raises:
        ConfigError: with one line naming the variable and what it accepts.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(_describe(first)) from None
