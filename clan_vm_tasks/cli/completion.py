"""Shell completion: the scripts ``completion bash|zsh|fish`` prints, and the answer each
Tab gets from ``clan-vm-manager __complete SHELL ...``.

Every Tab starts a process, so the answer must not load the tasks: the script carries
the command line's shape as a table (``table``: derived from the task declarations
when the script is made) and hands it back in ``$CLAN_VM_COMPLETE``; VM names come
straight from the state directory. Only ``os`` and ``sys`` are imported for that; what
needs more (snapshots, a settings file's hosts, a flake's declared VMs) imports it then.
The script also runs the interpreter directly, without ``site`` and with the module path
the script was made with (the console script's own start-up costs a Tab more than the
answer does), and falls back to ``clan-vm-manager`` when that interpreter is gone.

Table: one line per task, tab-separated: the task's name, then ``@KIND`` for each
positional in order, ``*KIND`` when further bare words are names, ``--`` when the task
reads the words after ``--``, and each option as ``--flag`` (a flag; ``-f`` when it has a
letter too), ``--flag=KIND`` (takes a value), ``--flag?=KIND`` (the value may be left out)
or ``--flag+=KIND`` (repeatable), ``%`` before ``=`` when the value NAME=VALUE may be two
words. KIND: vm, snapshot, host, file, dir, remote (a file or ``NAME:``), none,
or choices as ``a|b|c``.
"""

from __future__ import annotations

import os
import sys

SHELLS = ("bash", "zsh", "fish")
# The last answer may hand over to the shell's own completion of files or directories.
FILES, DIRS = "__files__", "__dirs__"


def _kinds() -> dict[str, str]:
    """What an option's or positional's value is, by parameter name (default: free text)."""
    from clan_vm_tasks.state.settings import ACCELS
    from clan_vm_tasks.state.store import STATES

    return {
        "name": "vm",
        "vm": "vm",
        "snap": "snapshot",
        "host": "host",
        "kernel": "file",
        "initrd": "file",
        "from_image": "file",
        "junit": "file",
        "clan_dir": "dir",
        "flake": "dir",
        "source": "remote",
        "target": "remote",
        "filter": "|".join(STATES),
        "accel": "|".join(ACCELS),
        "network": "user|nat|bridge|tap|none",
        "action": "push|remove",  # inventory's actions, checked in the task
    }


def table() -> str:
    """The command line's shape, from the task declarations (see the module's docstring)."""
    from clan_vm_tasks.cli.options import options
    from clan_vm_tasks.tasks import every_task

    kinds = _kinds()
    lines = ["completion\t@" + "|".join(SHELLS)]
    for name, spec in sorted(every_task().items()):
        fields = [name]
        opts = options(spec)
        fields += [f"@{kinds.get(o.name, 'none')}" for o in opts if o.positional]
        if spec.names is not None:
            fields.append(f"*{kinds.get(spec.names, 'none')}")
        if spec.after_dashes is not None:
            fields.append("--")
        for o in opts:
            if o.positional:  # given as a bare word (--name works too, but is noise here)
                continue
            if o.kind == "bool":
                fields += [o.flag, *([o.short] if o.short else [])]
            else:
                mark = "?" if o.optional else "+" if o.kind == "list" else ""
                mark += "%" if o.pair else ""
                fields.append(f"{o.flag}{mark}={kinds.get(o.name, 'none')}")
        lines.append("\t".join(fields))
    return "\n".join(lines)


# --- the scripts --------------------------------------------------------------------------------

_BASH = r"""# clan-vm-manager completion for bash: eval "$(clan-vm-manager completion bash)"
_clan_vm_manager_table=__TABLE__
_clan_vm_manager_python=__PYTHON__
_clan_vm_manager_code=__CODE__
_clan_vm_manager() {
    local IFS=$'\n' cur=${COMP_WORDS[COMP_CWORD]}
    local -a reply run=("${COMP_WORDS[0]}")
    [[ -x $_clan_vm_manager_python ]] &&
        run=("$_clan_vm_manager_python" -S -c "$_clan_vm_manager_code")
    reply=($(CLAN_VM_COMPLETE="$_clan_vm_manager_table" CLAN_VM_WORDBREAKS="$COMP_WORDBREAKS" \
        "${run[@]}" __complete bash "${COMP_LINE:0:COMP_POINT}" 2>/dev/null))
    local last=""
    (( ${#reply[@]} )) && last=${reply[-1]}
    case $last in
        __files__) unset 'reply[-1]'; compopt -o filenames 2>/dev/null
            reply+=($(compgen -f -- "$cur")) ;;
        __dirs__) unset 'reply[-1]'; compopt -o filenames 2>/dev/null
            reply+=($(compgen -d -- "$cur")) ;;
    esac
    COMPREPLY=("${reply[@]}")
    [[ ${#reply[@]} -eq 1 && ${reply[0]} == *: ]] && compopt -o nospace 2>/dev/null
}
complete -F _clan_vm_manager clan-vm-manager
"""

_ZSH = r"""#compdef clan-vm-manager
# clan-vm-manager completion for zsh: eval "$(clan-vm-manager completion zsh)" (after compinit)
_clan_vm_manager_table=__TABLE__
_clan_vm_manager_python=__PYTHON__
_clan_vm_manager_code=__CODE__
_clan_vm_manager() {
    local -a reply run=(${words[1]})
    [[ -x $_clan_vm_manager_python ]] && run=($_clan_vm_manager_python -S -c $_clan_vm_manager_code)
    reply=("${(@f)$(CLAN_VM_COMPLETE="$_clan_vm_manager_table" \
        $run __complete zsh "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    case ${reply[-1]-} in
        __files__) reply[-1]=(); _files ;;
        __dirs__) reply[-1]=(); _files -/ ;;
    esac
    local -a names=(${(M)reply:#*:}) words=(${reply:#*:})
    (( $#names )) && compadd -S '' -a names
    (( $#words )) && compadd -a words
}
compdef _clan_vm_manager clan-vm-manager
"""

_FISH = r"""# clan-vm-manager completion for fish: clan-vm-manager completion fish | source
set -g __clan_vm_manager_table __TABLE__
set -g __clan_vm_manager_python __PYTHON__
set -g __clan_vm_manager_code __CODE__
function __clan_vm_manager_complete
    set -l words (commandline -opc) (commandline -ct)
    set -l run $words[1]
    test -x $__clan_vm_manager_python
    and set run $__clan_vm_manager_python -S -c $__clan_vm_manager_code
    set -l reply (env CLAN_VM_COMPLETE=$__clan_vm_manager_table \
        $run __complete fish $words[2..-1] 2>/dev/null)
    switch "$reply[-1]"
        case __files__
            set -e reply[-1]
            __fish_complete_path (commandline -ct)
        case __dirs__
            set -e reply[-1]
            __fish_complete_directories (commandline -ct)
    end
    printf '%s\n' $reply
end
complete -c clan-vm-manager -f -a '(__clan_vm_manager_complete)'
"""


def _quoted(shell: str, text: str) -> str:
    if shell == "fish":
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "$'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def answering() -> tuple[str, str]:
    """The interpreter and the code a script runs for an answer: this interpreter, without
    ``site``, with this command's module path. Without ``site`` an import hook (pip's
    default editable install) is not there: its entry gives way to the package's directory."""
    import clan_vm_tasks

    # [0] is where this command was started from: not the package's.
    path = [entry for entry in sys.path[1:] if os.path.exists(entry)]
    found = os.path.dirname(os.path.dirname(os.path.abspath(clan_vm_tasks.__file__)))
    if found not in path:
        path.append(found)
    code = (
        f"import sys; sys.path[:0] = {path!r}; "
        "from clan_vm_tasks.cli import entry; sys.argv[0] = 'clan-vm-manager'; entry()"
    )
    return sys.executable, code


def script(shell: str) -> str:
    python, code = answering()
    template = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}[shell]
    return (
        template.replace("__TABLE__", _quoted(shell, table()))
        .replace("__PYTHON__", _quoted(shell, python))
        .replace("__CODE__", _quoted(shell, code))
    )


def script_command(words: list[str]) -> None:
    """``clan-vm-manager completion SHELL``."""
    if len(words) != 1 or words[0] not in SHELLS:
        print(f"error: completion takes one shell: {' | '.join(SHELLS)}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(script(words[0]))


# --- the answer to a Tab ------------------------------------------------------------------------


def _split(line: str) -> list[str]:
    """LINE as the shell splits it into words (quotes and backslashes; an unfinished quote
    is the word being typed). A trailing blank starts a new, empty word."""
    words: list[str] = []
    word, quote, started, escaped = "", "", False, False
    for char in line:
        if escaped:
            word, escaped = word + char, False
        elif char == "\\" and quote != "'":
            escaped, started = True, True
        elif quote:
            if char == quote:
                quote = ""
            else:
                word += char
        elif char in "'\"":
            quote, started = char, True
        elif char in " \t":
            if started:
                words.append(word)
            word, started = "", False
        else:
            word, started = word + char, True
    words.append(word)
    return words


def _parse_table(text: str) -> dict[str, list[str]]:
    return {fields[0]: fields[1:] for fields in (line.split("\t") for line in text.split("\n"))}


def answer(args: list[str]) -> None:
    """Print the candidates for the last word, one a line (``__complete SHELL WORDS...``;
    bash gives its line up to the cursor instead of words)."""
    if not args or args[0] not in SHELLS:
        return
    shell, words = args[0], args[1:]
    if shell == "bash":
        words = _split(words[0])[1:] if words else [""]
    words = words or [""]
    text = os.environ.get("CLAN_VM_COMPLETE") or table()  # a script of an older version: ask
    found = candidates(_parse_table(text), words[:-1], words[-1])
    if shell == "bash":  # bash replaces only what follows the last of its word breaks
        breaks = os.environ.get("CLAN_VM_WORDBREAKS", "=:")
        cut = max((words[-1].rfind(b) for b in breaks if b not in " \t\n"), default=-1)
        if cut >= 0:
            prefix = words[-1][: cut + 1]
            found = [
                c if c in (FILES, DIRS) else c[cut + 1 :]
                for c in found
                if c.startswith(prefix) or c in (FILES, DIRS)
            ]
    sys.stdout.write("".join(f"{c}\n" for c in found))


def candidates(shape: dict[str, list[str]], before: list[str], current: str) -> list[str]:
    """What may come in place of CURRENT after the words BEFORE (the task's name first)."""
    task = next((w for w in before if not w.startswith("-")), None)
    if task is None:
        if current.startswith("-"):
            return _matching(["--help", "--version", "--list"], current)
        return _matching(sorted(shape), current)
    fields = shape.get(task)
    if fields is None:
        return []
    after_task = before[before.index(task) + 1 :]
    if "--" in after_task and "--" in fields:
        return []  # the guest's command: nothing of ours
    options = {f.split("=")[0].rstrip("?+%"): f for f in fields if f.startswith("-") and f != "--"}
    flag, eq, value = current.partition("=")
    if current.startswith("--") and eq and flag in options:
        return [f"{flag}={c}" for c in _values(options[flag], value, after_task, shape)]
    previous = options.get(after_task[-1], "") if after_task else ""
    if "=" in previous and not previous.split("=")[0].endswith("?"):  # its value is due
        return _values(previous, current, after_task[:-1], shape)
    if current.startswith("-"):
        given = set(after_task)
        offered = [o for o, f in options.items() if o not in given or "+" in f.split("=")[0]]
        return _matching([*offered, "--help"], current)
    count = _bare_words(after_task, options)
    positionals = [f[1:] for f in fields if f.startswith("@")]
    if count < len(positionals):
        return _values("=" + positionals[count], current, after_task, shape)
    names = [f[1:] for f in fields if f.startswith("*")]
    return _values("=" + names[0], current, after_task, shape) if names else []


def _bare_words(words: list[str], options: dict[str, str]) -> int:
    """How many of WORDS are positionals (not options, nor the values they took)."""
    count, i = 0, 0
    while i < len(words):
        word = words[i]
        if word.startswith("-") and len(word) > 1:
            spec = options.get(word)
            if spec is not None and "=" in spec and "?=" not in spec:
                i += 1  # its value
                if "%=" in spec and i < len(words) and "=" not in words[i]:
                    i += 1  # the second word of NAME VALUE
        else:
            count += 1
        i += 1
    return count


def _matching(choices: list[str], current: str) -> list[str]:
    return [c for c in choices if c.startswith(current)]


def _values(field: str, current: str, words: list[str], shape: dict[str, list[str]]) -> list[str]:
    kind = field.split("=", 1)[1]
    if kind == "file":
        return [FILES]
    if kind == "dir":
        return [DIRS]
    if kind == "vm":
        return _matching(vm_names(), current)
    if kind == "remote":
        if ":" in current or current.startswith(("/", ".", "~")):
            return [] if ":" in current else [FILES]
        return [*_matching([f"{n}:" for n in vm_names()], current), FILES]
    if kind == "snapshot":
        bare = [w for w in words if not w.startswith("-")]
        return _matching(snapshot_names(bare[0]), current) if bare else []
    if kind == "host":
        return _matching(host_names(), current)
    if "|" in kind:
        return _matching(kind.split("|"), current)
    return []


# --- what the answers are made of ---------------------------------------------------------------


def _settings_file_exists() -> bool:
    from clan_vm_tasks.state import location

    return os.path.isfile(location.settings_file())


def state_dir() -> str:
    from clan_vm_tasks.state import location

    if _settings_file_exists():  # only then does the state directory need the settings
        from clan_vm_tasks.state.settings import Settings

        return str(Settings.load().state_dir)
    return location.state_dir()


def vm_names() -> list[str]:
    """The VMs in the state directory, and inside a flake the VMs it declares (as last
    evaluated: a Tab never evaluates)."""
    vms = os.path.join(state_dir(), "vms")
    try:
        entries = os.listdir(vms)
    except OSError:
        entries = []
    names = {e for e in entries if e[:1] != "." and os.path.isfile(f"{vms}/{e}/config.json")}
    return sorted(names | set(_declared()))


def _declared() -> list[str]:
    if not os.environ.get("CLAN_VM_FLAKE") and not _in_flake(os.getcwd()):
        return []
    try:
        from pathlib import Path

        from clan_vm_tasks.nix import cache, flakes

        flake = flakes.resolve(None)
        if flake is None:
            return []
        key = cache.key(flake.ref, flake.directory, flakes.current_system())
        return sorted(cache.load(Path(state_dir()), key) or {})
    except Exception:  # a Tab never shows an error
        return []


def _in_flake(directory: str) -> bool:
    while True:
        if os.path.isfile(os.path.join(directory, "flake.nix")):
            return True
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent


def snapshot_names(name: str) -> list[str]:
    try:
        from clan_vm_tasks.tasks.common import open_store
        from clan_vm_tasks.vm.snapshots import list_snapshots

        store, _ = open_store(create=False)
        return [s.name for s in list_snapshots(store, name)]
    except Exception:  # no such VM, its host unreachable: nothing to offer
        return []


def host_names() -> list[str]:
    if not _settings_file_exists():
        return []
    try:
        from clan_vm_tasks.state.settings import Settings

        return sorted(Settings.load().hosts)
    except Exception:
        return []
