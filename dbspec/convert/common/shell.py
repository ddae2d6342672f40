"""Split a shell command (a string, or a .sh / .bat / .txt file) into the argv its script receives.

Only as much shell as training launch scripts use: line continuations (`\\` in POSIX shells, `^` in cmd.exe),
quotes, comments, command separators, and `VAR=value` / `set VAR=value` variables referenced later as `$VAR`,
`${VAR}` or `%VAR%`. Unknown variables stay as written. The command kept is the one that runs a `.py` script
(`accelerate launch ... train_db.py --flag value`), or else the one with the most `--` options.
"""

from __future__ import annotations

import re

import attrs

_ASSIGN = re.compile(r"^(?:export\s+|set\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.I)
_POSIX_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_CMD_VAR = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")


@attrs.frozen(kw_only=True)
class Command:
    launcher: tuple[str, ...]  # tokens before the script: `accelerate launch --num_processes 1`, `python`
    script: str  # the script's file name, e.g. "train_db.py"; "" when the text is bare options
    args: tuple[str, ...]  # what the script's argparse sees
    # Lines that start with an option and follow the command without a line continuation (a paste that lost
    # its `\\`/`^`): a shell would run each as a command of its own; they are joined to the command, and
    # each is named here by its first token so the converter can say so.
    joined: tuple[str, ...] = ()


def split_command(text: str, windows: bool | None = None) -> Command:
    """The script invocation in `text`. `windows` None guesses cmd.exe syntax from `^` continuations."""
    if windows is None:
        windows = bool(re.search(r"\^[ \t]*\r?$|^\s*(?:@echo|set\s+\w+=|rem\b)", text, re.M | re.I))
    commands = _cmd_commands(text) if windows else _posix_commands(text)
    return _pick(commands)


def _pick(commands: list[list[str]]) -> Command:
    for n, tokens in enumerate(commands):
        for i, token in enumerate(tokens):
            if token.lower().endswith(".py"):
                name = re.split(r"[\\/]", token)[-1]
                more = _option_lines(commands, n + 1)
                return Command(
                    launcher=tuple(tokens[:i]),
                    script=name,
                    args=(*tokens[i + 1 :], *(t for line in more for t in line)),
                    joined=tuple(line[0] for line in more),
                )
    first = next((n for n, t in enumerate(commands) if t and t[0].startswith("--")), None)
    lines = _option_lines(commands, first) if first is not None else []
    if len(lines) > 1:  # options only, one per line (pasted from an issue)
        args = tuple(t for line in lines for t in line)
        return Command(launcher=(), script="", args=args, joined=tuple(line[0] for line in lines[1:]))
    best = max(commands, key=lambda t: sum(x.startswith("--") for x in t), default=[])
    start = next((i for i, t in enumerate(best) if t.startswith("--")), len(best))
    return Command(launcher=tuple(best[:start]), script="", args=tuple(best[start:]))


def _option_lines(commands: list[list[str]], start: int) -> list[list[str]]:
    """The commands from `start` on that begin with an option, up to the first that does not."""
    lines = []
    for tokens in commands[start:]:
        if not tokens or not tokens[0].startswith("-"):
            break
        lines.append(tokens)
    return lines


# --- POSIX shells -------------------------------------------------------------------------------------------


def _posix_commands(text: str) -> list[list[str]]:
    text = re.sub(r"\\\r?\n", "", text)  # line continuations
    variables: dict[str, str] = {}
    commands: list[list[str]] = []
    for line in text.splitlines():
        for tokens in _posix_line(line, variables):
            if (
                len(tokens) == 1
                and _ASSIGN.match(tokens[0])
                or (tokens[:1] == ["export"] and len(tokens) == 2)
            ):
                name, _, value = tokens[-1].partition("=")
                variables[name] = value
            elif tokens:
                commands.append(tokens)
    return commands


def _posix_line(line: str, variables: dict[str, str]) -> list[list[str]]:
    """Tokens of one line, split into commands at ;, &&, || and |."""
    commands: list[list[str]] = [[]]
    word: list[str] | None = None
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t":
            word = _end(commands, word)
        elif c == "#" and word is None:
            break
        elif c in ";&|":
            word = _end(commands, word)
            i += 1 if line[i : i + 2] in ("&&", "||") else 0
            commands.append([])
        elif c == "'":
            close = line.find("'", i + 1)
            close = n if close < 0 else close
            word = (word or []) + [line[i + 1 : close]]
            i = close
        elif c == '"':
            chunk, i = _double_quoted(line, i + 1, variables)
            word = (word or []) + [chunk]
        elif c == "\\" and i + 1 < n:
            word = (word or []) + [line[i + 1]]
            i += 1
        elif c == "$":
            value, i = _variable(line, i, variables)
            word = (word or []) + [value]
            continue
        else:
            word = (word or []) + [c]
        i += 1
    _end(commands, word)
    return [c for c in commands if c]


def _double_quoted(line: str, i: int, variables: dict[str, str]) -> tuple[str, int]:
    out: list[str] = []
    while i < len(line) and line[i] != '"':
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in '$`"\\':
            out.append(line[i + 1])
            i += 2
        elif line[i] == "$":
            value, i = _variable(line, i, variables)
            out.append(value)
        else:
            out.append(line[i])
            i += 1
    return "".join(out), i


def _variable(line: str, i: int, variables: dict[str, str]) -> tuple[str, int]:
    m = _POSIX_VAR.match(line, i)
    if not m:
        return "$", i + 1
    name = m.group(1) or m.group(2)
    return variables.get(name, m.group(0)), m.end()


def _end(commands: list[list[str]], word: list[str] | None) -> None:
    if word is not None:
        commands[-1].append("".join(word))
    return None


# --- cmd.exe ----------------------------------------------------------------------------------------------


def _cmd_commands(text: str) -> list[list[str]]:
    text = re.sub(r"\^[ \t]*\r?\n", " ", text)
    variables: dict[str, str] = {}
    commands: list[list[str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("::") or re.match(r"(?i)^(rem|@echo)\b", stripped):
            continue
        m = _ASSIGN.match(stripped)
        if m and stripped.lower().startswith("set "):
            variables[m.group(1).upper()] = m.group(2).strip('"')
            continue
        expanded = _CMD_VAR.sub(lambda v: variables.get(v.group(1).upper(), v.group(0)), stripped)
        commands += _cmd_line(expanded)
    return commands


def _cmd_line(line: str) -> list[list[str]]:
    commands: list[list[str]] = [[]]
    word: list[str] | None = None
    quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == '"':
            quoted = not quoted
            word = word or []
        elif quoted:
            word = (word or []) + [c]
        elif c == "^" and i + 1 < len(line):
            word = (word or []) + [line[i + 1]]
            i += 1
        elif c in " \t":
            word = _end(commands, word)
        elif c in "&|":
            word = _end(commands, word)
            i += 1 if line[i : i + 2] in ("&&", "||") else 0
            commands.append([])
        else:
            word = (word or []) + [c]
        i += 1
    _end(commands, word)
    return [c for c in commands if c]
