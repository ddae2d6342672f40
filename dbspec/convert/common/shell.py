"""Split a shell command (a string, or a .sh / .bat / .txt file) into the argv its script receives.

Only as much shell as training launch scripts use: line continuations (`\\` in POSIX shells, `^` in cmd.exe),
quotes, comments, command separators, and `VAR=value` / `export VAR=value` / `set VAR=value` variables
referenced later as `$VAR`, `${VAR}`, `${VAR:-default}` or `%VAR%`. An unquoted `$VAR` is word-split on
whitespace as the shell does (`--instance_prompt=$PROMPT` with a multi-word prompt passes several words;
each split is recorded so a converter can say so). Unknown variables stay as written. `bash -c "..."` /
`sh -c '...'` strings are split as commands of their own (the inner shell sees exported variables only).

The command kept is the launch of a script: `python [-u] x.py`, `python -m accelerate.commands.launch ...
x.py`, `accelerate launch [options] x.py`, `torchrun [options] x.py`, `deepspeed [options] x.py`, anywhere in
a command, so wrappers before it (`docker run ... image`, `srun ...`, `nohup`, `CUDA_VISIBLE_DEVICES=0`,
`conda run -n env`) are skipped; or a `.py` file run directly as a command. Given the known script names, the
first launch of one of them wins (a `wget .../train_dreambooth.py` line is no launch). Without any launch, the
first `.py` token is used, else the command with the most `--` options.
"""

from __future__ import annotations

import re

import attrs

_ASSIGN = re.compile(r"^(?:export\s+|set\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.I)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_POSIX_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-=+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_CMD_VAR = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")
_PYTHON = re.compile(r"^(?:python|pythonw|py)(?:\d+(?:\.\d+)*)?(?:\.exe)?$", re.I)
_SHELLS = {"bash", "sh", "zsh", "dash", "ksh"}
_DECLARE = {"export", "local", "declare", "readonly", "typeset"}
_IFS = " \t\n"

# Launcher options that take a value (`--name value`): the value is never the script. Others are flags; an
# unknown option's value is skipped too, since only a `.py` token can be the script.
_LAUNCH_VALUED = {
    "accelerate": {
        "config_file", "num_processes", "num_machines", "mixed_precision", "gpu_ids", "machine_rank",
        "main_process_ip", "main_process_port", "num_cpu_threads_per_process", "dynamo_backend",
        "dynamo_mode", "rdzv_backend", "rdzv_conf", "max_restarts", "monitor_interval",
        "deepspeed_config_file",
        "zero_stage", "offload_optimizer_device", "offload_param_device", "gradient_accumulation_steps",
        "gradient_clipping", "deepspeed_hostfile", "deepspeed_multinode_launcher", "fsdp_sharding_strategy",
        "fsdp_auto_wrap_policy", "fsdp_transformer_layer_cls_to_wrap", "fsdp_state_dict_type",
        "same_network", "log_dir", "tee", "role", "module",
    },
    "torchrun": {
        "nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend",
        "rdzv_endpoint",
        "rdzv_id", "rdzv_conf", "max_restarts", "monitor_interval", "start_method", "role", "log_dir", "r",
        "t", "redirects", "tee", "local_addr", "logs_specs", "local_ranks_filter",
    },
    "deepspeed": {
        "num_gpus", "num_nodes", "master_port", "master_addr", "hostfile", "include", "exclude", "launcher",
        "module",
    },
}  # fmt: skip
_PYTHON_MODULES = {
    "accelerate.commands.launch": "accelerate",
    "torch.distributed.run": "torchrun",
    "torch.distributed.launch": "torchrun",
    "deepspeed": "deepspeed",
    "deepspeed.launcher.runner": "deepspeed",
}


@attrs.frozen(kw_only=True)
class Command:
    launcher: tuple[str, ...]  # tokens from the launcher to the script: `accelerate launch --num_processes 1`
    script: str  # the script's file name, e.g. "train_db.py"; "" when the text is bare options
    args: tuple[str, ...]  # what the script's argparse sees
    # Lines that start with an option and follow the command without a line continuation (a paste that lost
    # its `\\`/`^`): a shell would run each as a command of its own; they are joined to the command, and
    # each is named here by its first token so the converter can say so.
    joined: tuple[str, ...] = ()
    wrapper: tuple[str, ...] = ()  # tokens before the launcher: `docker run ... image`, `srun -N1`, `nohup`
    # Unquoted variables of the command whose value the shell split into several words: (name, value).
    split: tuple[tuple[str, str], ...] = ()
    others: tuple[str, ...] = ()  # later launches of known scripts in the text, not converted (script names)


@attrs.frozen
class _Line:
    tokens: list[str]
    split: list[tuple[str, str]] = attrs.field(factory=list)


def split_command(text: str, windows: bool | None = None, scripts: tuple[str, ...] = ()) -> Command:
    """The script invocation in `text`. `windows` None guesses cmd.exe syntax from `^` continuations.
    `scripts`: the script names (stems) the caller knows; the first launch of one of them is kept."""
    if windows is None:
        windows = bool(re.search(r"\^[ \t]*\r?$|^\s*(?:@echo|set\s+\w+=|rem\b)", text, re.M | re.I))
    commands = [_Line(c) for c in _cmd_commands(text)] if windows else _posix_commands(text, {}, set())
    return _pick(commands, scripts)


def _pick(commands: list[_Line], scripts: tuple[str, ...]) -> Command:
    launches = [(n, *found) for n, line in enumerate(commands) if (found := _launch(line.tokens))]
    known = [c for c in launches if _stem(commands[c[0]].tokens[c[2]]) in scripts] if scripts else []
    chosen = (known or launches or [None])[0]
    if chosen is None:  # no launcher: the first `.py` token anywhere (a bare `train.py --flag` paste)
        chosen = next(
            (
                (n, i, i)
                for n, line in enumerate(commands)
                for i, t in enumerate(line.tokens)
                if t.lower().endswith(".py")
            ),
            None,
        )
    if chosen is not None:
        n, start, at = chosen
        line = commands[n]
        more = _option_lines(commands, n + 1)
        others = tuple(
            _name(commands[c[0]].tokens[c[2]]) for c in (known or launches) if c is not chosen and c[0] > n
        )
        return Command(
            launcher=tuple(line.tokens[start:at]),
            wrapper=tuple(line.tokens[:start]),
            script=_name(line.tokens[at]),
            args=(*line.tokens[at + 1 :], *(t for m in more for t in m.tokens)),
            joined=tuple(m.tokens[0] for m in more),
            split=tuple(dict.fromkeys([*line.split, *(s for m in more for s in m.split)])),
            others=tuple(o for o in others if not scripts or _stem(o) in scripts),
        )
    first = next((n for n, c in enumerate(commands) if c.tokens and c.tokens[0].startswith("--")), None)
    lines = _option_lines(commands, first) if first is not None else []
    if len(lines) > 1:  # options only, one per line (pasted from an issue)
        args = tuple(t for line in lines for t in line.tokens)
        return Command(
            launcher=(),
            script="",
            args=args,
            joined=tuple(line.tokens[0] for line in lines[1:]),
            split=tuple(s for line in lines for s in line.split),
        )
    best = max(commands, key=lambda c: sum(x.startswith("--") for x in c.tokens), default=_Line([]))
    start = next((i for i, t in enumerate(best.tokens) if t.startswith("--")), len(best.tokens))
    return Command(
        launcher=tuple(best.tokens[:start]),
        script="",
        args=tuple(best.tokens[start:]),
        split=tuple(best.split),
    )


def _name(token: str) -> str:
    return re.split(r"[\\/]", token)[-1]


def _stem(token: str) -> str:
    name = _name(token)
    return name[:-3] if name.lower().endswith(".py") else name


def _launch(tokens: list[str]) -> tuple[int, int] | None:
    """(where the launcher starts, where the script is) of the first script launch in a command, or None."""
    i = 0
    while i < len(tokens):
        word = _name(tokens[i]).lower()
        kind = None
        after = i + 1
        if word == "accelerate" and tokens[i + 1 : i + 2] == ["launch"]:
            kind, after = "accelerate", i + 2
        elif word in ("torchrun", "deepspeed"):
            kind = word
        elif _PYTHON.match(word):
            found = _python(tokens, i + 1)
            if found is not None:
                kind, after = found
                if kind == "":  # `python x.py`
                    return i, after
        elif i == _first_word(tokens) and word.endswith(".py"):
            return i, i  # `./train.py --flag` run directly
        if kind:
            at = _script_after(tokens, after, _LAUNCH_VALUED[kind])
            if at is not None:
                return i, at
        i += 1
    return None


def _first_word(tokens: list[str]) -> int:
    """The command word: after `VAR=value` prefixes."""
    return next((i for i, t in enumerate(tokens) if not _NAME.match(t)), len(tokens))


def _python(tokens: list[str], i: int) -> tuple[str, int] | None:
    """After `python`: ("", script index) for `python [opts] x.py`, (launcher kind, index after the module)
    for `python -m accelerate.commands.launch` & co, None otherwise (`-c`, another module)."""
    while i < len(tokens):
        token = tokens[i]
        if token == "-m" and i + 1 < len(tokens):
            module = tokens[i + 1]
            if module == "accelerate" and tokens[i + 2 : i + 3] == ["launch"]:
                return "accelerate", i + 3
            kind = _PYTHON_MODULES.get(module)
            return (kind, i + 2) if kind else None
        if token.startswith("-m") and len(token) > 2:
            kind = _PYTHON_MODULES.get(token[2:])
            return (kind, i + 1) if kind else None
        if token in ("-W", "-X"):
            i += 2
        elif token.startswith("-c") or token == "-":
            return None
        elif token.startswith("-"):
            i += 1
        else:
            return ("", i) if token.lower().endswith(".py") else None
    return None


def _script_after(tokens: list[str], i: int, valued: set[str]) -> int | None:
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("-"):
            name, eq, _ = token.lstrip("-").partition("=")
            i += 2 if not eq and name.replace("-", "_") in valued else 1
        elif token.lower().endswith(".py"):
            return i
        else:  # the value of an option not in the table, or `launch`'s own words
            i += 1
    return None


def _option_lines(commands: list[_Line], start: int) -> list[_Line]:
    """The commands from `start` on that begin with an option, up to the first that does not."""
    lines = []
    for line in commands[start:]:
        if not line.tokens or not line.tokens[0].startswith("-"):
            break
        lines.append(line)
    return lines


# --- POSIX shells -------------------------------------------------------------------------------------------


def _posix_commands(text: str, variables: dict[str, str], exported: set[str]) -> list[_Line]:
    text = re.sub(r"\\\r?\n", "", text)  # line continuations
    commands: list[_Line] = []
    for line in text.splitlines():
        for command in _PosixLine(line, variables).commands():
            tokens = command.tokens
            words = tokens[1:] if tokens[0] in _DECLARE else tokens
            if words and all(_NAME.match(t) for t in words):  # assignments only
                for word in words:
                    name, _, value = word.partition("=")
                    variables[name] = value
                    if tokens[0] == "export":
                        exported.add(name)
            elif tokens[0] in _DECLARE:
                if tokens[0] == "export":
                    exported.update(t.partition("=")[0] for t in words)
            elif (inner := _shell_string(tokens)) is not None:  # the wrapper itself runs nothing we need
                seen = {k: v for k, v in variables.items() if k in exported}
                commands += _posix_commands(inner, seen, set(exported))
            else:
                commands.append(command)
    return commands


def _shell_string(tokens: list[str]) -> str | None:
    """The command string of `bash -c "..."` / `sh -lc '...'` anywhere in a command (after wrappers)."""
    for i, token in enumerate(tokens):
        if _name(token) not in _SHELLS:
            continue
        j = i + 1
        while j < len(tokens) and tokens[j].startswith("-") and not tokens[j].startswith("--"):
            if "c" in tokens[j][1:]:
                return tokens[j + 1] if j + 1 < len(tokens) else None
            j += 1
    return None


class _PosixLine:
    """Tokens of one line, split into commands at ;, &&, || and |, with variables expanded."""

    def __init__(self, line: str, variables: dict[str, str]):
        self.line, self.variables = line, variables
        self.out: list[_Line] = [_Line([])]
        self.word: list[str] | None = None
        self.discard = False  # the next word is a redirection's target

    def commands(self) -> list[_Line]:
        line, n, i = self.line, len(self.line), 0
        while i < n:
            c = line[i]
            if c in " \t":
                self.end()
            elif c == "#" and self.word is None:
                break
            elif c in "<>" or (c == "&" and line[i + 1 : i + 2] == ">"):
                i = self.redirect(i)
                continue
            elif c in ";&|":
                self.end()
                i += 1 if line[i : i + 2] in ("&&", "||") else 0
                self.out.append(_Line([]))
            elif c == "'":
                close = line.find("'", i + 1)
                close = n if close < 0 else close
                self.add(line[i + 1 : close])
                i = close
            elif c == '"':
                i = self.double_quoted(i + 1)
            elif c == "\\" and i + 1 < n:
                self.add(line[i + 1])
                i += 1
            elif c == "$":
                i = self.dollar(i, quoted=False)
                continue
            else:
                self.add(c)
            i += 1
        self.end()
        return [c for c in self.out if c.tokens]

    def add(self, text: str) -> None:
        self.word = (self.word or []) + [text]

    def end(self) -> None:
        if self.word is not None and self.discard:
            self.discard = False
        elif self.word is not None:
            self.out[-1].tokens.append("".join(self.word))
        self.word = None

    def redirect(self, i: int) -> int:
        """`> log`, `2>&1`, `&> log`, `>> log`, `< in`: no word of the command; returns where to go on."""
        line, n = self.line, len(self.line)
        if self.word is not None and "".join(self.word).isdigit():  # the `2` of `2>`
            self.word = None
        else:
            self.end()
        i += 2 if line[i] == "&" else 1
        if i < n and line[i] in "<>":
            i += 1
        if i < n and line[i] == "&":  # >&2, 2>&1
            i += 1
            while i < n and (line[i].isdigit() or line[i] == "-"):
                i += 1
            return i
        self.discard = True
        return i

    def double_quoted(self, i: int) -> int:
        line = self.line
        self.add("")  # "" is a word even when empty
        while i < len(line) and line[i] != '"':
            if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in '$`"\\':
                self.add(line[i + 1])
                i += 2
            elif line[i] == "$":
                i = self.dollar(i, quoted=True)
            else:
                self.add(line[i])
                i += 1
        return i

    def dollar(self, i: int, quoted: bool) -> int:
        line = self.line
        if line.startswith("$(", i):  # command substitution: kept as written, one word
            close = _matching_paren(line, i + 1)
            self.add(line[i:close])
            return close
        m = _POSIX_VAR.match(line, i)
        if not m:
            self.add("$")
            return i + 1
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        value = self.variables.get(name)
        if op is not None and (value is None or (op.startswith(":") and value == "")):
            if op.endswith("+"):
                value = ""
            else:
                value = default
                if op.endswith("="):
                    self.variables[name] = default
        elif op is not None and op.endswith("+"):
            value = default
        if value is None:
            self.add(m.group(0))
        elif quoted or self.assigning():
            self.add(value)
        else:
            self.split_value(name, value)
        return m.end()

    def assigning(self) -> bool:
        """In `NAME=...` of a command of assignments so far: the value is not word-split."""
        tokens = self.out[-1].tokens
        start = tokens[1:] if tokens[:1] and tokens[0] in _DECLARE else tokens
        return bool(self.word and _NAME.match("".join(self.word))) and all(_NAME.match(t) for t in start)

    def split_value(self, name: str, value: str) -> None:
        """An unquoted expansion: split on whitespace into words, as the shell's field splitting does."""
        parts = value.split()
        if not parts:
            if value:
                self.end()
            return
        if value[0] in _IFS:
            self.end()
        for k, part in enumerate(parts):
            self.add(part)
            if k < len(parts) - 1:
                self.end()
        if value[-1] in _IFS:
            self.end()
        if len(parts) > 1:
            self.out[-1].split.append((name, value))


def _matching_paren(line: str, i: int) -> int:
    depth = 0
    for j in range(i, len(line)):
        depth += {"(": 1, ")": -1}.get(line[j], 0)
        if depth == 0:
            return j + 1
    return len(line)


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


def _end(commands: list[list[str]], word: list[str] | None) -> None:
    if word is not None:
        commands[-1].append("".join(word))
    return None
