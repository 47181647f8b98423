"""Block Kit for reelbot: the job card, the request and remix modals, and buttons in replies.

Everything here is pure data in, dicts out, so it is easy to test and to preview in Slack's
Block Kit Builder. Buttons carry the job id in their ``value``: a click after a restart needs no
in-memory state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from bot.catalog import ASPECT_WORDS, SIZES, ModelInfo
from bot.delivery import CardView
from bot.money import format_usd

# Action and callback ids. Buttons keep working after a restart because these never change.
CANCEL = "reelbot_cancel"
REROLL = "reelbot_reroll"
REMIX = "reelbot_remix"
RETRY = "reelbot_retry"
JOB_ACTIONS = {"cancel": CANCEL, "reroll": REROLL, "remix": REMIX, "retry": RETRY}
VIDEO_VIEW = "reelbot_video"
REMIX_VIEW = "reelbot_remix_view"
SHORTCUT = "reelbot_make_video"

# Block and action ids inside the modals.
PROMPT_BLOCK, MODEL_BLOCK, SIZE_BLOCK, SECONDS_BLOCK, IMAGE_BLOCK = "prompt", "model", "size", "seconds", "image"
AUDIO_BLOCK = "audio"
VALUE = "value"

MAX_TEXT = 3000  # Slack's limit for a section's text and for a plain_text_input
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp"]


def escape(text: str) -> str:
    """Escapes what a person typed so Slack shows it literally (no pings, no fake links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ESCAPED_MENTION = re.compile(r"&lt;@([A-Za-z0-9_]{1,40})&gt;")
_MENTION_TOKEN = re.compile(r"<@[A-Za-z0-9_]{1,40}>")
_MENTIONED = re.compile(r"<@([A-Za-z0-9_]{1,40})>")


def slack_text(text: str, *, people: Iterable[str] = (), private: bool = False) -> str:
    """The one way text from the core reaches Slack (messages, fallbacks, comments, titles, replies).

    The core's sentences mix reelbot's words with what people typed (prompts, names, reasons,
    forbidden words, file names) and cannot tell them apart, so the whole string is escaped with
    Slack's rules (``&``, ``<``, ``>``): ``<!channel>``, ``<!here>``, ``<!subteam^…>``, ``<@U…>`` and
    masked links like ``<https://evil|Sign in>`` show as typed and do nothing. reelbot's own markup
    (``*bold*``, `` `code` ``) survives, since Slack needs no escape for it.

    The one piece of Slack markup the core writes itself is a user mention (``<@U…>``), naming the
    person a message is about before it quotes what they typed. In a channel or thread a mention
    notifies, so only the first mention of each id in ``people`` (the job's requester) is turned
    back into one. In a ``private`` message (ephemeral, or a direct message: one reader) a user
    mention notifies nobody else, so every one shows as the person's name rather than an id; group
    pings and links stay inert there too.
    """
    escaped = escape(text)
    if private:
        return _ESCAPED_MENTION.sub(lambda m: f"<@{m.group(1)}>", escaped)
    pending = {person for person in people if person}
    if not pending:
        return escaped

    def restore(match: re.Match[str]) -> str:
        if match.group(1) in pending:
            pending.discard(match.group(1))
            return f"<@{match.group(1)}>"
        return match.group(0)

    return _ESCAPED_MENTION.sub(restore, escaped)


def _plain(text: str, limit: int = 75) -> dict:
    return {"type": "plain_text", "text": text[:limit], "emoji": True}


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def progress_bar(percent: int, width: int = 10) -> str:
    percent = max(0, min(100, percent))
    filled = round(percent * width / 100)
    return "▰" * filled + "▱" * (width - filled)


def button(action_id: str, label: str, value: str, *, style: str | None = None, confirm: dict | None = None) -> dict:
    element: dict = {"type": "button", "action_id": action_id, "text": _plain(label), "value": value[:2000]}
    if style:
        element["style"] = style
    if confirm:
        element["confirm"] = confirm
    return element


def _job_button(action: str, job_id: str) -> dict:
    match action:
        case "cancel":
            confirm = {
                "title": _plain("Cancel this clip?"),
                "text": {"type": "mrkdwn", "text": f"Job `{job_id}` stops and you are not charged for it."},
                "confirm": _plain("Cancel the clip"),
                "deny": _plain("Keep it"),
            }
            return button(CANCEL, "Cancel", job_id, style="danger", confirm=confirm)
        case "reroll":
            return button(REROLL, "Re-roll", job_id)
        case "remix":
            return button(REMIX, "Remix", job_id)
        case "retry":
            return button(RETRY, "Retry delivery", job_id, style="primary")
    raise ValueError(f"unknown card action {action!r}")


def card_text(card: CardView) -> str:
    """The notification/fallback text of a card (what screen readers and notifications show)."""
    return _clip(slack_text(f"{card.title}: {card.status}"), 300)


def _requester(card: CardView) -> str:
    """The Slack adapter names people as ``<@U…>``: that one token stays a mention, anything else is text."""
    return card.requester if _MENTION_TOKEN.fullmatch(card.requester) else slack_text(card.requester)


def card_blocks(card: CardView) -> list[dict]:
    """The job card: prompt, settings, cost, requester, status (with a bar while rendering), buttons."""
    status = slack_text(card.status, people=_MENTIONED.findall(card.requester))
    if card.state == "rendering":
        status = f"{progress_bar(card.progress)} {status}"
    meta = f"{slack_text(card.settings)} · {slack_text(card.cost)} · asked by {_requester(card)}"
    blocks: list[dict] = [
        {
            "type": "section",
            "block_id": "card_head",
            "text": {"type": "mrkdwn", "text": _clip(f"*{slack_text(card.title)}*\n>{slack_text(card.prompt)}")},
        },
        {"type": "context", "block_id": "card_meta", "elements": [{"type": "mrkdwn", "text": _clip(meta)}]},
        {"type": "section", "block_id": "card_status", "text": {"type": "mrkdwn", "text": _clip(f"*{status}*")}},
    ]
    buttons = [_job_button(action, card.job_id) for action in card.actions if action in JOB_ACTIONS]
    if buttons:
        blocks.append({"type": "actions", "block_id": "card_actions", "elements": buttons})
    return blocks


def reply_blocks(text: str, actions: tuple[tuple[str, str], ...]) -> list[dict]:
    """A message with buttons ``(action_id, label)``; the action id is also the button's value.

    ``text`` is mrkdwn already made safe with ``slack_text``."""
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": _clip(text)}}]
    if actions:
        elements = [button(action_id[:255], label, action_id) for action_id, label in actions[:25]]
        blocks.append({"type": "actions", "block_id": "reply_actions", "elements": elements})
    return blocks


# --- modals ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModalContext:
    """Where a modal's clip goes, carried through Slack in ``private_metadata``.

    Attributes:
        channel_id: the channel the request came from.
        thread_ts: the thread to post into (for a message shortcut: the message's thread).
        file_ids: Slack file ids of the image to start from (message shortcut).
        job_id: the job being remixed (remix modal).
    """

    channel_id: str
    thread_ts: str | None = None
    file_ids: tuple[str, ...] = ()
    job_id: str | None = None

    def dump(self) -> str:
        data = {"c": self.channel_id, "t": self.thread_ts, "f": list(self.file_ids), "j": self.job_id}
        return json.dumps({k: v for k, v in data.items() if v})

    @classmethod
    def load(cls, raw: str | None) -> ModalContext:
        try:
            data = json.loads(raw or "{}")
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        files = data.get("f") or []
        return cls(
            channel_id=str(data.get("c") or ""),
            thread_ts=str(data["t"]) if data.get("t") else None,
            file_ids=tuple(str(f) for f in files if isinstance(f, str)),
            job_id=str(data["j"]) if data.get("j") else None,
        )


def _option(value: str, label: str | None = None) -> dict:
    return {"text": _plain(label or value), "value": value}


def _select(block_id: str, label: str, options: list[dict], initial: str) -> dict:
    selected = next((o for o in options if o["value"] == initial), options[0])
    return {
        "type": "input",
        "block_id": block_id,
        "label": _plain(label),
        "element": {"type": "static_select", "action_id": VALUE, "options": options, "initial_option": selected},
    }


def _prompt_input(initial: str, *, label: str = "What should the clip show?", hint: str | None = None) -> dict:
    element: dict = {
        "type": "plain_text_input",
        "action_id": VALUE,
        "multiline": True,
        "max_length": MAX_TEXT,
        "placeholder": _plain("a paper boat sailing down a rainy street, close-up"),
    }
    if initial:
        element["initial_value"] = _clip(initial)
    block: dict = {"type": "input", "block_id": PROMPT_BLOCK, "label": _plain(label), "element": element}
    if hint:
        block["hint"] = _plain(hint, 2000)
    return block


def _optional_select(block_id: str, label: str, options: list[dict], hint: str) -> dict:
    """A select left empty by default: empty means "the model's default"."""
    return {
        "type": "input",
        "block_id": block_id,
        "optional": True,
        "label": _plain(label),
        "hint": _plain(hint, 2000),
        "element": {"type": "static_select", "action_id": VALUE, "options": options[:100]},
    }


def _size_label(size: str) -> str:
    aspect, resolution = next(key for key, value in SIZES.items() if value == size)
    return f"{size} ({ASPECT_WORDS[aspect]}, {resolution})"


def video_modal(
    models: tuple[ModelInfo, ...],
    context: ModalContext,
    *,
    default_model: str | None = None,
    prompt: str = "",
    file_input: bool = True,
    image_note: str | None = None,
) -> dict:
    """The request form: prompt, model, size, length, sound and (from ``/video``) an image upload.

    ``models`` are the catalog's models a configured provider serves; size, length and sound are left
    empty (the model's defaults) and the core checks whatever is chosen against the chosen model.
    """

    def model_label(model: ModelInfo) -> str:
        cheapest = model.cheapest_per_second()
        return f"{model.name} (from {format_usd(cheapest)}/s)" if cheapest is not None else model.name

    model_options = [_option(m.name, model_label(m)) for m in models[:100]]
    sizes = list(dict.fromkeys(size for m in models for size in m.sizes()))
    size_options = [_option(size, _size_label(size)) for size in sorted(sizes, key=lambda v: (len(v), v))]
    second_options = [_option(str(n), f"{n} seconds") for n in sorted({n for m in models for n in m.durations})]
    sound_options = [_option("on", "With sound"), _option("off", "Silent (cheaper, where the model allows)")]
    blocks: list[dict] = [_prompt_input(prompt)]
    if model_options:
        initial = default_model or model_options[0]["value"]
        blocks.append(_select(MODEL_BLOCK, "Model", model_options, initial))
    blocks += [
        _optional_select(SIZE_BLOCK, "Size", size_options, "Empty: the model's default (landscape, 720p)."),
        _optional_select(SECONDS_BLOCK, "Length", second_options, "Empty: the model's shortest length."),
        _optional_select(AUDIO_BLOCK, "Sound", sound_options, "Empty: the model's default (with sound)."),
    ]
    if file_input:
        blocks.append(
            {
                "type": "input",
                "block_id": IMAGE_BLOCK,
                "optional": True,
                "label": _plain("Start from an image (optional)"),
                "hint": _plain("A JPEG, PNG or WEBP picture becomes the clip's first frame."),
                "element": {"type": "file_input", "action_id": VALUE, "filetypes": IMAGE_TYPES, "max_files": 1},
            }
        )
    if image_note:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(image_note)}]})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": "Each model takes its own sizes and lengths; `/video models` compares them and "
                    "`/video help MODEL` shows one. The price is charged to your budget once the clip is made.",
                }
            ],
        }
    )
    return {
        "type": "modal",
        "callback_id": VIDEO_VIEW,
        "private_metadata": context.dump(),
        "title": _plain("Make a video", 24),
        "submit": _plain("Make it", 24),
        "close": _plain("Cancel", 24),
        "blocks": blocks,
    }


def remix_modal(context: ModalContext, prompt: str, settings: str) -> dict:
    """Change a delivered clip: the prompt to edit, prefilled."""
    return {
        "type": "modal",
        "callback_id": REMIX_VIEW,
        "private_metadata": context.dump(),
        "title": _plain("Remix the clip", 24),
        "submit": _plain("Remix", 24),
        "close": _plain("Cancel", 24),
        "blocks": [
            _prompt_input(prompt, label="Say what to change", hint=f"Same settings as before: {settings}."),
        ],
    }


def literal_prompt(prompt: str) -> str:
    """Quotes a prompt typed in a form field so the command language keeps it whole: words that
    look like flags (``--pro``) or subcommands (``budget``) stay part of the prompt."""
    prompt = " ".join(prompt.split())
    if '"' not in prompt:
        return f'"{prompt}"'
    if "\u201d" not in prompt:
        return f"\u201c{prompt}\u201d"
    return prompt


def view_values(view: dict) -> dict[str, object]:
    """The values of a submitted modal by block id: text, a selected option's value, or a list of files."""
    out: dict[str, object] = {}
    state = ((view or {}).get("state") or {}).get("values") or {}
    for block_id, actions in state.items():
        if not isinstance(actions, dict):
            continue
        element = actions.get(VALUE) or next(iter(actions.values()), None)
        if not isinstance(element, dict):
            continue
        kind = element.get("type")
        if kind == "file_input":
            out[block_id] = [f for f in element.get("files") or [] if isinstance(f, dict)]
        elif kind in ("static_select", "radio_buttons"):
            selected = element.get("selected_option") or {}
            out[block_id] = selected.get("value")
        else:
            out[block_id] = element.get("value")
    return out


# Which form field a refusal is about, read from the sentence (the parser's and the catalog's, e.g.
# "sora-2 takes 4, 8 or 12 seconds (got 7)."), first match wins. A model that does not exist comes
# first; a size refusal may name other models ("Models that make 1920x1080: ..."), so size comes
# before the model fallback.
_FIELD_OF_ERROR: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^tell me what to film\b|^the prompt\b"), PROMPT_BLOCK),
    (re.compile(r"^there is no model\b|\bis not available here\b|^--model\b|^no video model\b"), MODEL_BLOCK),
    (re.compile(r"\bseconds?\b"), SECONDS_BLOCK),
    (re.compile(r"\bsizes?\b|\baspect\b|\bresolution\b|\b\d+:\d+\b|\b\d+p\b|\b\d+x\d+\b"), SIZE_BLOCK),
    (re.compile(r"\bsound\b|\bsilent\b|--audio\b"), AUDIO_BLOCK),
    (re.compile(r"\bmodels?\b"), MODEL_BLOCK),
)


def error_block(message: str) -> str:
    """The block id of the form field a refusal of the request form belongs next to (the prompt when
    no field is named)."""
    lowered = message.lower().split("usage:", 1)[0]  # a usage line names every flag; the sentence before it counts
    for pattern, block_id in _FIELD_OF_ERROR:
        if pattern.search(lowered):
            return block_id
    return PROMPT_BLOCK
