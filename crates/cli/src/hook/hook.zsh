# agentvm's shell hook for zsh (`eval "$(agentvm hook zsh)"` in ~/.zshrc):
# when you cd into a workspace whose configuration you approved, it opens
# `agentvm shell` there. Leaving that shell keeps you where you are; it opens
# again only after a cd into another workspace, or back into this one after
# leaving it. AGENTVM_HOOK=off turns it off.
_agentvm_hook() {
    local ws
    [[ ${AGENTVM_HOOK:-} == off ]] && return
    [[ $PWD == "${_agentvm_hook_pwd-}" ]] && return
    (( $+commands[agentvm] )) || return
    _agentvm_hook_pwd=$PWD
    if ws=$(command agentvm __hook-check --previous "${_agentvm_hook_ws-}" -- "$PWD"); then
        _agentvm_hook_ws=$ws
        command agentvm shell
    else
        _agentvm_hook_ws=$ws
    fi
}
autoload -Uz add-zsh-hook
add-zsh-hook precmd _agentvm_hook
