# $1: 0 when the package is removed, 1 when it is upgraded.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now warren.service >/dev/null 2>&1 || :
fi
exit 0
