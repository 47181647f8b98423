"""``/video cameo ...``: the commands, and the settings (status, history, audience, allow list, forbidden words).

Validation of the arguments lives here rather than in the parser (``bot.commands`` only splits
``cameo ACTION ARGS``): who may be allowed, how many words may be forbidden and how long each is.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from bot import texts
from bot.commands import CameoCommand
from bot.consent.identity import (
    is_verified,
)
from bot.consent.policy import AUDIENCE_WORDS, AUDIENCES
from bot.consent.registration import USER_ID, Registration
from bot.consent.words import MAX_WORDS, listing, parse_words
from bot.core import Reply, mention, resolve_user
from bot.jobs import ChatRequest, Requester

MAX_ALLOW_PER_COMMAND = 20
MAX_PENDING_SHOWN = 5  # requests a status lists (each with three buttons)


class CameoCommands(Registration):
    async def handle(self, command: CameoCommand, request: ChatRequest) -> Reply:
        requester = request.requester
        match command.action:
            case "register":
                return await self._register(request)
            case "confirm":
                return await self._confirm(requester)
            case "verify":
                if len(command.args) != 1:
                    return Reply("Whose cameo? /video cameo verify @name.", ok=False)
                return await self._verify(requester, resolve_user(command.args[0], request))
            case "status":
                return await self._status(requester)
            case "history":
                return await self._history(requester)
            case "revoke":
                return await self._revoke(requester)
            case "audience":
                return await self._audience(requester, command.args)
            case "allow" | "disallow":
                return await self._allow(request, command.args, command.action == "allow")
            case "forbid" | "unforbid":
                return await self._forbid(requester, command.args, command.action == "forbid")
            case "approve" | "deny":
                if len(command.args) != 1:
                    return Reply(
                        f"Which request? /video cameo {command.action} REQUEST (see /video cameo status).", ok=False
                    )
                return await self._decide(requester, command.args[0], command.action, always=command.always)
        return Reply("Cameo commands: register, confirm, status, history, audience, allow, forbid, revoke.", ok=False)

    # --- settings ----------------------------------------------------------------------------

    async def _status(self, requester: Requester) -> Reply:
        cameo = await self.store.get(requester.key)
        if cameo is None or cameo.status == "revoked":
            return Reply(
                "You have no cameo. Register one with /video cameo register (attach an image or a 2-4 s "
                "video of yourself)."
            )
        lines = [f"Your cameo is {cameo.status}; audience: {AUDIENCE_WORDS[cameo.audience]}."]
        if cameo.status == "active" and not is_verified(cameo, self.admin_verify):
            lines.append("It waits for a workspace admin to verify that it shows you; nobody can use it until then.")
        allowed = await self.store.allowed_users(cameo.owner_key)
        if allowed:
            names = [mention(cameo.platform, k.rsplit(":", 1)[-1]) for k in allowed]
            lines.append("Approved: " + listing(names))
        words = await self.store.forbidden_words(cameo.owner_key)
        if words:
            lines.append("Never with: " + listing(words))
        actions: list[tuple[str, str]] = []
        waiting = await self.store.pending(cameo.owner_key)
        if len(waiting) > MAX_PENDING_SHOWN:
            lines.append(f"{len(waiting)} requests wait for you; the oldest {MAX_PENDING_SHOWN}:")
        for pending in waiting[:MAX_PENDING_SHOWN]:
            job = await self.bot.store.get_job(pending.job_id)
            asker = mention(cameo.platform, pending.requester_key.rsplit(":", 1)[-1])
            prompt = texts.short_prompt(job.prompt, 60) if job else "?"
            lines.append(
                f"Waiting for you: request {pending.id} from {asker}: “{prompt}” "
                f"(/video cameo approve {pending.id} [--always] or /video cameo deny {pending.id})"
            )
            actions += [
                (f"cameo_approve:{pending.id}", "Approve once"),
                (f"cameo_always:{pending.id}", "Always allow"),
                (f"cameo_deny:{pending.id}", "Deny"),
            ]
        return Reply("\n".join(lines), actions=tuple(actions))

    async def _history(self, requester: Requester) -> Reply:
        events = await self.store.history(requester.key)
        if not events:
            return Reply("Your cameo has no history yet.")
        lines = ["Your cameo's history (newest first):"]
        for event in events:
            when = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M")
            who = mention(requester.platform, event.actor_key.rsplit(":", 1)[-1])
            if event.action == "used_in_job":
                lines.append(f"• {when} used in job {event.job_id} asked by {who} {event.detail}")
            else:
                job = f" job {event.job_id}" if event.job_id else ""
                detail = f" ({texts.short_prompt(event.detail, 80)})" if event.detail else ""
                lines.append(f"• {when} {event.action.replace('_', ' ')}{job} by {who}{detail}")
        return Reply("\n".join(lines[:60]))

    async def _audience(self, requester: Requester, args: tuple[str, ...]) -> Reply:
        found = await self._active(requester)
        if isinstance(found, Reply):
            return found
        if len(args) != 1 or args[0].lower() not in AUDIENCES:
            return Reply("Audience is one of: only-me, approved, workspace, everyone.", ok=False)
        audience = AUDIENCES[args[0].lower()]
        await self.store.save(
            replace(found, audience=audience), actor_key=requester.key, action="audience_changed", detail=audience
        )
        return Reply(f"Your cameo may now be used by {AUDIENCE_WORDS[audience]}.")

    async def _allow(self, request: ChatRequest, args: tuple[str, ...], allow: bool) -> Reply:
        requester = request.requester
        verb = "allow" if allow else "disallow"
        found = await self._active(requester)
        if isinstance(found, Reply):
            return found
        if not args:
            return Reply(f"Whom? /video cameo {verb} @name.", ok=False)
        if len(args) > MAX_ALLOW_PER_COMMAND:
            return Reply(f"Name at most {MAX_ALLOW_PER_COMMAND} people at a time.", ok=False)
        user_ids = []
        for token in args:
            user_id = resolve_user(token, request)
            if not USER_ID.fullmatch(user_id):
                shown = texts.short_prompt(token, 30)
                return Reply(f"“{shown}” is not a person. Name them: /video cameo {verb} @name.", ok=False)
            if user_id not in user_ids:
                user_ids.append(user_id)
        names = []
        for user_id in user_ids:
            user_key = f"{requester.platform}:{requester.workspace_id}:{user_id}"
            await self.store.set_allowed(found.owner_key, user_key, allow, actor_key=requester.key)
            names.append(mention(requester.platform, user_id))
        if allow:
            note = (
                ""
                if found.audience == "approved"
                else (f" (your audience is {AUDIENCE_WORDS[found.audience]}; approvals count when it is 'approved')")
            )
            return Reply(f"{', '.join(names)} may use your cameo{note}.")
        return Reply(f"{', '.join(names)} may no longer use your cameo without asking.")

    async def _forbid(self, requester: Requester, args: tuple[str, ...], forbid: bool) -> Reply:
        found = await self._active(requester)
        if isinstance(found, Reply):
            return found
        parsed = parse_words(args)
        if parsed.refusal:
            return Reply(parsed.refusal, ok=False)
        words = list(parsed.words)
        if forbid:
            current = set(await self.store.forbidden_words(found.owner_key))
            total = len(current | set(words))
            if total > MAX_WORDS:
                return Reply(
                    f"A cameo can forbid at most {MAX_WORDS} words; you have {len(current)} and this would make "
                    f"{total}. Remove some with /video cameo unforbid WORD.",
                    ok=False,
                )
        await self.store.set_forbidden(found.owner_key, words, forbid, actor_key=requester.key)
        if forbid:
            return Reply(f"Your cameo will never be used with: {listing(words)}.")
        return Reply(f"Removed from your forbidden words: {listing(words)}.")
