"""Preflight's verdict: one line per check, OK / WARN / FAIL, as a table and as JSON."""
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List

STATUSES = ('OK', 'WARN', 'FAIL')
EXIT_CODES = dict(OK=0, WARN=0, FAIL=1)  # 2: bad command line (argparse)


@dataclass
class Line:
    """One check: what it found (``result``) and, unless OK, what to change (``advice``)."""
    check: str
    status: str
    result: str
    advice: str = ''
    data: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f'status {self.status!r} is not one of {list(STATUSES)}')


def overall(lines: List[Line]) -> str:
    """The worst status of ``lines`` (OK when there are none)."""
    return max((line.status for line in lines), key=STATUSES.index, default='OK')


def exit_code(lines: List[Line]) -> int:
    """0 when nothing FAILs (warnings included), 1 when a check FAILs."""
    return EXIT_CODES[overall(lines)]


def _cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def format_table(lines: List[Line]) -> str:
    """A Markdown table, one row per line, and the overall verdict below it."""
    rows = ['| check | status | result | what to change |', '|---|---|---|---|']
    rows += [f'| {_cell(line.check)} | {line.status} | {_cell(line.result)} | '
             f'{_cell(line.advice)} |' for line in lines]
    verdict = overall(lines)
    counts = ', '.join(f'{sum(line.status == s for line in lines)} {s}' for s in STATUSES)
    rows.append(f'\nverdict: {verdict} ({counts}); exit code {EXIT_CODES[verdict]}')
    return '\n'.join(rows)


def to_json(lines: List[Line], **context) -> str:
    """``{**context, verdict, exit_code, lines: [{check, status, result, advice, data}]}``."""
    return json.dumps(dict(context, verdict=overall(lines), exit_code=exit_code(lines),
                           lines=[asdict(line) for line in lines]), indent=2)
