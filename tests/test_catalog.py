"""The model catalog: the shipped file, the operator's file, who serves what, and prices to the micro-dollar."""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.console import ConsoleDelivery
from bot import texts
from bot.app import App, build_app
from bot.catalog import Catalog, choose, load_catalog, shipped_catalog
from bot.catalog._load import shipped_text
from bot.commands import CommandError, VideoCommand, parse
from bot.config import ConfigError, Settings
from bot.jobs import ChatRequest, Job, JobOptions, JobState, Requester
from bot.media import MediaError, probe_clip
from bot.money import UnknownPriceError
from bot.providers.base import Route, VideoStatus
from bot.providers.local import LocalRenderer

pytestmark = pytest.mark.timeout(60)

LOCAL = ("local",)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, "utf-8")
    return path


def priced(text: str, providers: tuple[str, ...] = LOCAL, catalog: Catalog | None = None) -> int:
    command = parse(text)
    assert isinstance(command, VideoCommand)
    return choose(command, catalog or shipped_catalog(), providers).cost_micros


def test_the_shipped_catalog_loads_with_every_model_the_issue_names() -> None:
    catalog = shipped_catalog()
    for name in ("veo-3.1-lite", "veo-3.1-fast", "veo-3.1", "kling-3", "seedance-2-mini", "ltx-2-fast", "sora-2"):
        assert catalog.get(name) is not None, name
    assert catalog.get("sora-2-pro") is not None
    assert catalog.default == "sora-2"
    assert {m.family for m in catalog.models} == {"veo", "kling", "seedance", "ltx", "wan", "sora"}


def test_every_shipped_price_is_a_whole_number_of_micro_dollars() -> None:
    raw = tomllib.loads(shipped_text())
    for name, table in raw["models"].items():
        for resolution, by_sound in table["prices"].items():
            for choice, micros in by_sound.items():
                assert type(micros) is int and micros > 0, (name, resolution, choice)
    for model in shipped_catalog().models:
        assert model.prices and all(type(v) is int for v in model.prices.values())
        assert model.verified or model.note, f"{model.name} must say where an unverified price comes from"


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("a cat", 400_000),  # sora-2, 4 s at $0.10
        ("a cat --model veo-3.1-lite", 200_000),  # 4 s at $0.05 with sound
        ("a cat --model veo-3.1-lite --silent", 120_000),  # 4 s at $0.03
        ("a cat --model veo-3.1-lite --seconds 6 --portrait", 300_000),
        ("a cat --model veo-3.1-lite --resolution 1080p", 640_000),  # 1080p only at 8 s, $0.08 with sound
        ("a cat --model veo-3.1-lite --resolution 1080p --silent", 400_000),
        ("a cat --model veo-3.1-fast --seconds 8 --silent", 800_000),
        ("a cat --model veo-3.1 --seconds 8", 3_200_000),
        ("a cat --model kling-3 --seconds 10 --square", 1_260_000),
        ("a cat --model kling-3 --silent", 420_000),
        ("a cat --model seedance-2-mini --seconds 7", 1_082_900),  # $0.1547/s at 720p
        ("a cat --model seedance-2-mini --resolution 480p --seconds 13", 937_300),
        ("a cat --model ltx-2-fast", 240_000),  # 6 s minimum at $0.04
        ("a cat --pro --seconds 12", 3_600_000),
        ("a cat --model wan-2.6 --resolution 1080p --seconds 10", 1_500_000),
    ],
)
def test_prices_are_exact_to_the_micro_dollar(text: str, micros: int) -> None:
    assert priced(text) == micros


def test_a_model_without_a_price_for_the_choice_is_refused_never_free(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[models."veo-3.1-lite"]\nprices = { "720p" = { sound = 50_000 } }\n',
    )
    catalog = load_catalog(models_file=path, default_model=None)
    model = catalog.get("veo-3.1-lite")
    assert model is not None
    with pytest.raises(UnknownPriceError):
        model.price_per_second("720p", False)
    with pytest.raises(UnknownPriceError):
        model.price_per_second("1080p", True)
    with pytest.raises(CommandError, match=r"No price is known for veo-3.1-lite at 720p without sound.*Nothing"):
        priced("a cat --model veo-3.1-lite --silent", catalog=catalog)
    assert priced("a cat --model veo-3.1-lite", catalog=catalog) == 200_000


def test_the_operator_file_adds_removes_and_changes_models_and_routes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
default = "house-model"
remove = ["sora-2-pro", "wan-2.6"]

[models."veo-3.1-lite"]
prices = { "720p" = { silent = 31_000, sound = 52_000 } }
routes = [{ provider = "openrouter", model_id = "google/veo-3.1-lite" }]

[models."house-model"]
label = "Our own"
family = "wan"
routes = [{ provider = "openai", model_id = "wan-house" }]
durations = [3, 5]
aspects = ["1:1"]
resolutions = ["480p"]
audio = "never"
prices = { "480p" = { silent = 7 } }
""",
    )
    catalog = load_catalog(models_file=path, default_model=None)
    assert catalog.get("sora-2-pro") is None and catalog.get("wan-2.6") is None
    assert catalog.default == "house-model"
    assert priced("a cat --model veo-3.1-lite --silent", catalog=catalog) == 124_000
    assert catalog.routes_for("veo-3.1-lite", ("fal", "openrouter")) == (Route("openrouter", "google/veo-3.1-lite"),)
    assert catalog.names[-1] == "house-model"
    assert priced("a cat", ("openai",), catalog) == 21  # the default, 3 s at 7 micro-USD
    assert catalog.get("house-model").size("1:1", "480p") == "480x480"  # type: ignore[union-attr]
    # REELBOT_DEFAULT_MODEL wins over the file's default.
    assert load_catalog(models_file=path, default_model="KLING-3").default == "kling-3"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[models", "not valid TOML"),
        ("colour = 1", "unknown top-level key 'colour'"),
        ('remove = ["sora-3"]', "remove names 'sora-3', which is not a shipped model"),
        ('[models."veo-3.1-lite"]\nprices = { "720p" = { sound = 0.05 } }', "must be whole micro-USD per second"),
        ('[models."veo-3.1-lite"]\nprices = { "4k" = { sound = 5 } }', "4k is not one of the model's resolutions"),
        ('[models."veo-3.1-lite"]\ndurations = []', "durations must be a non-empty list"),
        ('[models."veo-3.1-lite"]\naudio = "sometimes"', "audio must be always, never or optional"),
        ('[models."veo-3.1-lite"]\naspects = ["4:3"]', "aspects has '4:3'"),
        ('[models."veo-3.1-lite"]\nroutes = [{ provider = "acme", model_id = "x" }]', "provider must be one of"),
        ('[models."veo-3.1-lite"]\nprice = 5', "unknown key 'price'"),
        ('[models."new-one"]\nlabel = "x"', "is missing family, routes"),
        ('default = "nope"', "default names 'nope', which is not a model"),
    ],
)
def test_a_bad_operator_file_is_one_line_naming_the_file_and_the_problem(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_catalog(models_file=path, default_model=None)
    message = str(info.value)
    assert message.startswith(f"REELBOT_MODELS_FILE ({path})")
    assert fragment in message
    assert "\n" not in message


def test_a_missing_file_and_an_unknown_default_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^REELBOT_MODELS_FILE \(.*\): no such file\.$"):
        load_catalog(models_file=tmp_path / "absent.toml", default_model=None)
    with pytest.raises(ConfigError, match=r"^REELBOT_DEFAULT_MODEL: 'sora-9' is not a model; models: veo-3.1-lite"):
        load_catalog(models_file=None, default_model="sora-9")


@pytest.mark.parametrize(
    ("providers", "expected"),
    [
        (("fal",), ["veo-3.1-lite", "veo-3.1-fast", "veo-3.1", "kling-3", "seedance-2-mini", "ltx-2-fast"]),
        (("openrouter",), ["veo-3.1-lite", "veo-3.1-fast", "veo-3.1", "kling-3", "seedance-2-mini", "wan-2.6"]),
        (("openai",), ["sora-2", "sora-2-pro"]),
        (("fal", "openai"), [m for m in shipped_catalog().names if m != "wan-2.6"]),
        (("local",), list(shipped_catalog().names)),
        (("acme",), []),
    ],
)
def test_a_model_is_offered_only_when_one_of_its_providers_is_configured(
    providers: tuple[str, ...], expected: list[str]
) -> None:
    assert [m.name for m in shipped_catalog().enabled(providers)] == expected


def test_routes_follow_preference_and_local_stands_in_for_every_model() -> None:
    catalog = shipped_catalog()
    veo = catalog.routes_for("veo-3.1", ("openrouter", "fal"))
    assert [r.provider for r in veo] == ["fal", "openrouter"]  # the catalog's order, not the configuration's
    assert veo[0].reference_model_id == "fal-ai/veo3.1/reference-to-video"
    assert catalog.routes_for("veo-3.1", ("openai",)) == ()
    assert catalog.routes_for("ltx-2-fast", LOCAL) == (Route("local", "ltx-2-fast"),)
    # The default falls to the first served model where sora-2 has no provider, and stays put where it has one.
    assert catalog.default_for(("fal",)).name == "veo-3.1-lite"  # type: ignore[union-attr]
    assert catalog.default_for(("openai",)).name == "sora-2"  # type: ignore[union-attr]
    assert catalog.default_for(("acme",)) is None
    # Local stands in at the model's own price.
    assert priced("a cat --model veo-3.1", LOCAL) == priced("a cat --model veo-3.1", ("fal",)) == 1_600_000


@pytest.mark.parametrize(
    ("text", "providers", "message"),
    [
        ("a cat --model veo-3.1-lite --seconds 5", LOCAL, "veo-3.1-lite takes 4, 6 or 8 seconds (got 5)."),
        ("a cat --model seedance-2-mini --seconds 3", LOCAL, "seedance-2-mini takes 4 to 15 seconds (got 3)."),
        ("a cat --model veo-3.1-lite --resolution 1080p --seconds 4", LOCAL, "veo-3.1-lite makes 1080p only at 8"),
        ("a cat --model veo-3.1-lite --square", LOCAL, "takes 16:9 (landscape) or 9:16 (portrait), not 1:1"),
        ("a cat --model ltx-2-fast --resolution 720p", LOCAL, "ltx-2-fast takes 1080p (got 720p)."),
        ("a cat --size 1920x1080", LOCAL, "sora-2 takes sizes 1280x720 or 720x1280 (got 1920x1080). Models that"),
        ("a cat --size 1280x720 --portrait", LOCAL, "--size 1280x720 is 16:9, which contradicts 9:16"),
        ("a cat --silent", LOCAL, "sora-2 always makes sound, so --silent is not available for it."),
        ("a cat --model kling-3 --seed 4", LOCAL, "kling-3 does not take --seed. Models that do: veo-3.1-lite"),
        ("a cat --negative blur", LOCAL, "sora-2 does not take --negative."),
        ("a cat --model sora-3", LOCAL, "There is no model sora-3. Models here: veo-3.1-lite"),
        ("a cat --model sora-2", ("fal",), "sora-2 is not available here: no provider for it (openai) is configured"),
        ("a cat --pro", ("fal",), "sora-2-pro is not available here"),
        ("a cat --cameo @al", LOCAL, "sora-2 can't use a cameo. Models that can: veo-3.1 (add --model veo-3.1)."),
        ("a cat --cameo @al --model kling-3", ("openai",), "kling-3 is not available here"),
        ("a cat --cameo @al", ("openai",), "sora-2 can't use a cameo, and no model here can."),
        ("a cat", ("acme",), "No video model is available"),
    ],
)
def test_refusals_name_what_this_model_allows(text: str, providers: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError) as info:
        priced(text, providers)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_completed_request_has_every_option_and_a_spec_per_route() -> None:
    catalog = shipped_catalog()
    command = parse("a cat --model veo-3.1-lite --portrait --silent --seed 9 --negative 'blur'")
    assert isinstance(command, VideoCommand)
    choice = choose(command, catalog, ("fal", "openrouter"))
    done = choice.command
    assert (done.model, done.size, done.seconds, done.aspect, done.resolution, done.audio, done.seed) == (
        "veo-3.1-lite",
        "720x1280",
        4,
        "9:16",
        "720p",
        False,
        9,
    )
    assert choice.per_second_micros == 30_000 and choice.cost_micros == 120_000
    job = Job(
        id="j1",
        request_key="k",
        platform="console",
        workspace_id="w",
        user_id="u",
        user_name="u",
        channel_id="c",
        thread_id=None,
        prompt=done.prompt,
        options=JobOptions(
            model="veo-3.1-lite",
            size="720x1280",
            seconds=4,
            aspect="9:16",
            resolution="720p",
            audio=False,
            seed=9,
            negative="'blur'",
        ),
        state=JobState.QUEUED,
        cost_micros=120_000,
        created_at=0.0,
        updated_at=0.0,
        provider="fal",
    )
    routes = catalog.routes_for("veo-3.1-lite", ("fal", "openrouter"))
    spec = catalog.spec_for(job, routes[1], None)
    assert (spec.model, spec.family, spec.route, spec.aspect, spec.resolution, spec.audio, spec.seed) == (
        "veo-3.1-lite",
        "veo",
        Route("openrouter", "google/veo-3.1-lite"),
        "9:16",
        "720p",
        False,
        9,
    )
    assert spec.negative_prompt == "'blur'" and spec.size == "720x1280" and spec.seconds == 4
    promise = catalog.promise_for(job)
    assert (promise.sound, promise.exact_size) == (False, False)
    assert catalog.price_of(job) == 30_000
    # Through the local stand-in the spec says outright whether to make sound.
    sora = replace(job, options=JobOptions("sora-2", "1280x720", 4), provider="local")
    assert catalog.spec_for(sora, Route("local", "sora-2"), None).audio is True
    assert catalog.promise_for(sora).sound is True and catalog.promise_for(sora).exact_size is True


# --------------------------------------------------------------------------- through the bot and the local renderer


def ask(text: str, user: str = "alice") -> ChatRequest:
    return ChatRequest(
        requester=Requester("console", "w1", user, f"@{user}"),
        request_key=f"k-{time.monotonic_ns()}",
        channel_id="terminal",
        text=text,
    )


async def wait_final(app: App, job_id: str, timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await app.store.get_job(job_id)
        if job is not None and job.state.is_final:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture
async def running(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    settings = make_settings()
    app = await build_app(settings, provider=LocalRenderer(work_dir=settings.data_dir / "renders", fps=8))
    app.bot.register(ConsoleDelivery(quiet=True))
    app.worker.tick_seconds = 0.1
    await app.worker.start()
    try:
        yield app
    finally:
        await app.close()


async def test_models_help_a_priced_request_and_a_cameo_refusal_through_the_bot(running: App) -> None:
    bot = running.bot
    models = await bot.handle(ask("models"))
    assert models.ok and "veo-3.1-lite" in models.text and "ltx-2-fast" in models.text
    assert "`sora-2` (default)" in models.text and "local renderer makes a preview" in models.text

    one = await bot.handle(ask("help veo-3.1-lite"))
    assert one.ok
    for part in ("4, 6 or 8 seconds", "1080p only at 8 seconds", "720p $0.03/s silent, $0.05/s with sound"):
        assert part in one.text
    unknown = await bot.handle(ask("help veo-9"))
    assert not unknown.ok and unknown.text.startswith("There is no model veo-9. Models here: veo-3.1-lite")

    for text, fragment in [
        ("a walk --cameo @bob", "sora-2 can't use a cameo. Models that can: veo-3.1 (add --model veo-3.1)."),
        ("a cat --model veo-3.1-lite --seconds 5", "veo-3.1-lite takes 4, 6 or 8 seconds (got 5)."),
        ("a cat --model kling-3 --seed 3", "kling-3 does not take --seed."),
        ("cancel a b", "Usage: /video cancel JOB."),
        ('"a cat --pro --seconds 8', "never closed"),
        ("a cat --seconds ④", "--seconds takes a whole number"),
    ]:
        reply = await bot.handle(ask(text))
        assert not reply.ok and fragment in reply.text and reply.job is None, (text, reply.text)
    assert await running.store.jobs_for_user("console", "w1", "alice") == []
    assert (await running.store.ledger_totals()).reserved == 0

    reply = await bot.handle(ask("a paper boat --model veo-3.1-lite --portrait --seconds 6"))
    assert reply.ok and reply.job is not None, reply.text
    assert "$0.30" in reply.text  # 6 s x $0.05 with sound
    job = reply.job
    assert job.cost_micros == 300_000 and job.provider == "local"
    assert (job.options.model, job.options.size, job.options.aspect, job.options.resolution) == (
        "veo-3.1-lite",
        "720x1280",
        "9:16",
        "720p",
    )
    assert job.options.audio is True
    done = await wait_final(running, job.id)
    assert done.state is JobState.DELIVERED, done.error
    assert await running.store.ledger_for(job.id) == [("reserve", 300_000), ("settle", 300_000)]
    promise = bot.catalog.promise_for(done)
    info = probe_clip(Path(str(done.clip_path)), **asdict(promise))
    assert (info.width, info.height, info.has_audio) == (720, 1280, True)
    caption = texts.caption(done)
    assert "veo-3.1-lite · 720x1280 · 6 s · with sound · via local preview · $0.30" in caption
    assert "via local preview" in texts.card_view(done).settings

    silent = await bot.handle(ask("a quiet boat --model veo-3.1-lite --silent"))
    assert silent.ok and silent.job is not None and silent.job.cost_micros == 120_000
    assert silent.job.options.audio is False and "silent" in silent.text


async def test_the_local_stand_in_makes_a_silent_model_silent_and_keeps_it_after_a_restart(tmp_path: Path) -> None:
    catalog = shipped_catalog()
    job = Job(
        id="j2",
        request_key="k2",
        platform="console",
        workspace_id="w",
        user_id="u",
        user_name="u",
        channel_id="c",
        thread_id=None,
        prompt="a quiet street",
        options=JobOptions("veo-3.1-lite", "720x1280", 1, aspect="9:16", resolution="720p", audio=False),
        state=JobState.QUEUED,
        cost_micros=0,
        created_at=0.0,
        updated_at=0.0,
        provider="local",
    )
    spec = catalog.spec_for(job, catalog.routes_for("veo-3.1-lite", LOCAL)[0], None)
    renderer = LocalRenderer(work_dir=tmp_path / "renders", fps=8)
    try:
        created = await renderer.create(spec)
    finally:
        await renderer.aclose()  # stop before it finishes: a new process resumes from the sidecar
    again = LocalRenderer(work_dir=tmp_path / "renders", fps=8)
    try:
        deadline = time.monotonic() + 20
        while (await again.retrieve(created.id)).status is not VideoStatus.COMPLETED:
            assert time.monotonic() < deadline, "the render did not finish"
            await asyncio.sleep(0.05)
        dest = tmp_path / "clip.mp4"
        await again.download(created.id, dest)
    finally:
        await again.aclose()
    promise = catalog.promise_for(job)
    info = probe_clip(dest, **asdict(promise))
    assert (info.width, info.height, info.has_audio) == (720, 1280, False)
    with pytest.raises(MediaError, match="no sound track"):
        probe_clip(dest, seconds=1, size="720x1280")  # a model that promised sound would fail this clip
    # An aggregator's clip is checked by shape, not exact size: 720x1280 passes for 1080x1920, not for 1280x720.
    probe_clip(dest, seconds=1, size="1080x1920", sound=False, exact_size=False)
    with pytest.raises(MediaError, match="not the shape"):
        probe_clip(dest, seconds=1, size="1280x720", sound=False, exact_size=False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "cat",
                "--model",
                *shipped_catalog().names,
                "nope",
                "--pro",
                "--seconds",
                "4",
                "5",
                "8",
                "15",
                "--size",
                "1920x1080",
                "720x720",
                "--portrait",
                "--square",
                "--aspect",
                "1:1",
                "--resolution",
                "480p",
                "1080p",
                "--audio",
                "--silent",
                "--seed",
                "--negative",
                "--cameo",
                "@al",
            ]
        ),
        max_size=14,
    ),
    st.sampled_from([LOCAL, ("fal",), ("openrouter",), ("openai",), ("fal", "openrouter", "openai")]),
)
def test_choosing_is_total_and_every_completed_request_is_priced_exactly(
    words: list[str], providers: tuple[str, ...]
) -> None:
    catalog = shipped_catalog()
    try:
        command = parse(" ".join(words))
        if not isinstance(command, VideoCommand):
            return
        choice = choose(command, catalog, providers)
    except CommandError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    done, model = choice.command, choice.model
    assert model in catalog.enabled(providers)
    assert done.seconds in model.durations_at(str(done.resolution))
    assert done.size == model.size(str(done.aspect), str(done.resolution)) and done.size in model.sizes()
    assert choice.cost_micros == done.seconds * model.prices[(str(done.resolution), model.makes_sound(done.audio))]
    assert type(choice.cost_micros) is int and choice.cost_micros > 0
    assert done.cameo is None or model.subject_reference
