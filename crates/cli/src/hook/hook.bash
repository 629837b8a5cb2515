# agentvm's shell hook for bash (`eval "$(agentvm hook bash)"` in ~/.bashrc):
# when you cd into a workspace whose configuration you approved, it opens
# `agentvm shell` there. Leaving that shell keeps you where you are; it opens
# again only after a cd into another workspace, or back into this one after
# leaving it. AGENTVM_HOOK=off turns it off.
_agentvm_hook() {
    local rc=$? ws
    if [ "${AGENTVM_HOOK:-}" != off ] && [ "$PWD" != "${_agentvm_hook_pwd-}" ] &&
        type -P agentvm >/dev/null 2>&1; then
        _agentvm_hook_pwd=$PWD
        if ws=$(command agentvm __hook-check --previous "${_agentvm_hook_ws-}" -- "$PWD"); then
            _agentvm_hook_ws=$ws
            command agentvm shell
        else
            _agentvm_hook_ws=$ws
        fi
    fi
    return $rc
}
case ";${PROMPT_COMMAND-};" in
*";_agentvm_hook;"*) ;;
*) PROMPT_COMMAND="_agentvm_hook${PROMPT_COMMAND:+;$PROMPT_COMMAND}" ;;
esac
