# The flake apps: `nix run .#vm-start -- web` = `clan-vm-manager start web`, for every task.
# TOOL is the clan-vm-manager executable (a path, or a command name found on PATH);
# WRITESCRIPT name text makes an executable script (pkgs.writeShellScript, or a
# builtins-only stand-in where nixpkgs is not available); FLAKE is the flake the apps came
# from, or null.
#
# The apps act on the user's checkout: the tool takes the flake around the working directory
# (or --flake, $CLAN_VM_FLAKE). FLAKE, whose value here is its read-only copy in the Nix
# store, goes in $CLAN_VM_APP_FLAKE: the tool uses it only when the working directory is not
# inside a checkout of it (nix run github:...#vm-list), and never writes there. Its inputs
# as `nix run` evaluated them (with its --override-input, if any) go in $CLAN_VM_APP_INPUTS:
# the tool evaluates that flake with the same sources, without fetching anything. vm-create
# creates from the flake, vm-list lists its VMs next to the created ones (bare --flake).
{ tool, writeScript, flake ? null }:
let
  tasks = [
    "create" "start" "stop" "restart" "delete" "pause" "resume" "set"
    "list" "show" "status" "console" "history" "serve"
    "snapshot" "snapshots" "revert" "resize" "kept-disks" "inventory"
    "eval" "build" "boot-test" "switch"
    "exec" "copy" "ssh"
  ];
  # create and list read the flake only when asked: the apps ask (a bare --flake, after the
  # user's words since a bare flag takes the next word, and not when they name one).
  run = task:
    if builtins.elem task [ "create" "list" ] then ''
      case " $* " in
        *" --flake"*) exec ${tool} ${task} "$@" ;;
        *) exec ${tool} ${task} "$@" --flake ;;
      esac
    '' else ''
      exec ${tool} ${task} "$@"
    '';
  inputs = builtins.mapAttrs (_: input: input.outPath) (removeAttrs (flake.inputs or { }) [ "self" ]);
  app = task: {
    type = "app";
    program = "${writeScript "vm-${task}" ''
      ${if flake != null then "export CLAN_VM_APP_FLAKE=${flake}" else ""}
      ${if flake != null then "export CLAN_VM_APP_INPUTS='${builtins.toJSON inputs}'" else ""}
      ${run task}
    ''}";
  };
in
builtins.listToAttrs (map (task: { name = "vm-${task}"; value = app task; }) tasks)
