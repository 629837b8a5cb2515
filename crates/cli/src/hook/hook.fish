# agentvm's shell hook for fish (`agentvm hook fish | source` in
# ~/.config/fish/config.fish): when you cd into a workspace whose
# configuration you approved, it opens `agentvm shell` there. Leaving that
# shell keeps you where you are; it opens again only after a cd into another
# workspace, or back into this one after leaving it. AGENTVM_HOOK=off turns
# it off.
function _agentvm_hook --on-event fish_prompt
    test "$AGENTVM_HOOK" = off; and return
    test "$PWD" = "$_agentvm_hook_pwd"; and return
    command -q agentvm; or return
    set -g _agentvm_hook_pwd $PWD
    set -l ws (command agentvm __hook-check --previous "$_agentvm_hook_ws" -- $PWD)
    set -l rc $status
    set -g _agentvm_hook_ws "$ws"
    if test $rc -eq 0
        command agentvm shell
    end
end
