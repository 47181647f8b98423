"""Block Kit for reelbot: the job card, the request and remix modals, and buttons in replies.

Everything here is pure data in, dicts out, so it is easy to test and to preview in Slack's
Block Kit Builder. Buttons carry the job id in their ``value``: a click after a restart needs no
in-memory state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bot.commands import DEFAULT_MODEL, DEFAULT_SECONDS, DEFAULT_SIZE, MODELS, CommandRules
from bot.delivery import CardView

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
VALUE = "value"

MAX_TEXT = 3000  # Slack's limit for a section's text and for a plain_text_input
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp"]


def escape(text: str) -> str:
    """Escapes what a person typed so Slack shows it literally (no pings, no fake links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
    return _clip(f"{card.title}: {card.status}", 300)


def card_blocks(card: CardView) -> list[dict]:
    """The job card: prompt, settings, cost, requester, status (with a bar while rendering), buttons."""
    status = card.status
    if card.state == "rendering":
        status = f"{progress_bar(card.progress)} {status}"
    blocks: list[dict] = [
        {
            "type": "section",
            "block_id": "card_head",
            "text": {"type": "mrkdwn", "text": _clip(f"*{card.title}*\n>{escape(card.prompt)}")},
        },
        {
            "type": "context",
            "block_id": "card_meta",
            "elements": [
                {"type": "mrkdwn", "text": _clip(f"{card.settings} · {card.cost} · asked by {card.requester}")}
            ],
        },
        {"type": "section", "block_id": "card_status", "text": {"type": "mrkdwn", "text": _clip(f"*{status}*")}},
    ]
    buttons = [_job_button(action, card.job_id) for action in card.actions if action in JOB_ACTIONS]
    if buttons:
        blocks.append({"type": "actions", "block_id": "card_actions", "elements": buttons})
    return blocks


def reply_blocks(text: str, actions: tuple[tuple[str, str], ...]) -> list[dict]:
    """A message with buttons ``(action_id, label)``; the action id is also the button's value."""
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


def video_modal(
    rules: CommandRules,
    context: ModalContext,
    *,
    prompt: str = "",
    file_input: bool = True,
    image_note: str | None = None,
) -> dict:
    """The request form: prompt, model, size, seconds and (from ``/video``) an image upload."""
    models = [_option("sora-2", "sora-2 ($0.10/s)"), _option("sora-2-pro", "sora-2-pro (from $0.30/s)")]
    models = [m for m in models if m["value"] in MODELS]
    sizes = [
        _option(s, f"{s} ({'portrait' if int(s.split('x')[1]) > int(s.split('x')[0]) else 'landscape'})")
        for s in rules.sizes("sora-2-pro")
    ]
    seconds = [_option(str(s), f"{s} seconds") for s in rules.seconds]
    blocks: list[dict] = [
        _prompt_input(prompt),
        _select(MODEL_BLOCK, "Model", models, DEFAULT_MODEL),
        _select(SIZE_BLOCK, "Size", sizes, DEFAULT_SIZE),
        _select(SECONDS_BLOCK, "Length", seconds, str(DEFAULT_SECONDS)),
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
                    "text": "sora-2 takes 1280x720 or 720x1280; larger sizes need sora-2-pro. "
                    "The price is charged to your budget once the clip is made.",
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
