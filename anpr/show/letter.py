"""The answer to a data subject's access request (`anpr db subject-access --md/--html`) as a
letter a person can read: what is held about their plate, why, for how long, their rights
and whom to write to. Every text from outside (names, a camera's id) is escaped as in the
compliance report; the HTML page is one file that fetches nothing."""

from __future__ import annotations

import time

from anpr.show.page import CSS, esc, html_table, md_cell, md_table
from anpr.storage.subjects import NO_IMAGE, SubjectAnswer

RIGHTS = (
    "You may ask for what is wrong to be corrected (GDPR art. 16), for what is held to be erased "
    "(art. 17) or its use restricted (art. 18), and object to its use (art. 21). Records kept for a "
    "criminal-law purpose by a competent authority fall under Directive (EU) 2016/680 instead, whose "
    "rights may be restricted while a procedure lasts.",
    "You may lodge a complaint with the supervisory authority (art. 77): in France, the CNIL (www.cnil.fr).",
    "Every record listed goes by its date at the latest, without any request.",
)
_HEADER = (
    "when",
    "record",
    "camera",
    "purpose",
    "rule and legal basis",
    "kept until (UTC)",
    "what is held",
    "where",
)


def _utc(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(moment))


def _rows(answer: SubjectAnswer) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in answer.records:
        plate = "the plate" if r.plate_in_clear else "a keyed hash of the plate (not the plate itself)"
        held = f"{plate}; {', '.join(r.fields)}" + ("; it matched a flagged-vehicle file" if r.hit else "")
        until = _utc(r.delete_after) + (f" (kept on erasure: {r.kept_on_erasure})" if r.kept_on_erasure else "")
        rows.append((r.when, r.kind, r.camera, r.purpose, f"{r.rule}: {r.legal_reference}", until, held, r.where))
    return rows


def _summary(answer: SubjectAnswer) -> str:
    if not answer.records:
        return f"We hold nothing about the plate {answer.plate}."
    return f"We hold {len(answer.records)} record(s) of the plate {answer.plate}, listed below."


def _contact(answer: SubjectAnswer) -> str:
    officer = ", ".join(answer.dpo) or "-"
    return f"Controller: {answer.controller}. Data-protection officer: {officer}." + (
        f" Write to: {answer.contact}." if answer.contact else ""
    )


def render_letter_markdown(answer: SubjectAnswer) -> str:
    out = [
        f"# Your request about the plate {md_cell(answer.plate)}",
        "",
        md_cell(f"{answer.deployment or answer.controller}, {_utc(answer.asked_at)} UTC. {_contact(answer)}"),
        "",
        f"**{md_cell(_summary(answer))}** {md_cell(NO_IMAGE)}",
        "",
    ]
    if answer.records:
        out += md_table(_HEADER, _rows(answer))
    if answer.nothing_kept:
        out += ["## Purposes that keep nothing about a plate", ""]
        out += [f"- {md_cell(purpose)}: {md_cell(why)}" for purpose, why in answer.nothing_kept]
        out.append("")
    out += [
        "## How we looked",
        "",
        md_cell(f"The plate was looked for as {', '.join(answer.forms)} (the forms under which it may be stored), in:"),
        "",
        *[f"- {md_cell(place)}" for place in answer.places],
        "",
        "## Your rights",
        "",
        *[f"- {md_cell(text)}" for text in RIGHTS],
        "",
    ]
    return "\n".join(out)


def render_letter_html(answer: SubjectAnswer) -> str:
    title = f"Your request about the plate {answer.plate}"
    parts = [
        f"<h1>{esc(title)}</h1>",
        f"<p>{esc(answer.deployment or answer.controller)}, {esc(_utc(answer.asked_at))} UTC. "
        f"{esc(_contact(answer))}</p>",
        f'<p class="notice"><b>{esc(_summary(answer))}</b> {esc(NO_IMAGE)}</p>',
    ]
    if answer.records:
        parts.append(html_table(_HEADER, _rows(answer), table_id="records"))
    if answer.nothing_kept:
        items = "".join(f"<li><b>{esc(p)}</b>: {esc(why)}</li>" for p, why in answer.nothing_kept)
        parts.append(f'<section id="nothing-kept"><h2>Purposes that keep nothing about a plate</h2><ul>{items}</ul>')
        parts.append("</section>")
    places = "".join(f"<li>{esc(place)}</li>" for place in answer.places)
    rights = "".join(f"<li>{esc(text)}</li>" for text in RIGHTS)
    parts += [
        f'<section id="how"><h2>How we looked</h2><p>{esc("The plate was looked for as " + ", ".join(answer.forms))}'
        f" (the forms it may be stored under), in:</p><ul>{places}</ul></section>",
        f'<section id="rights"><h2>Your rights</h2><ul>{rights}</ul></section>',
    ]
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
