# The system user warren runs as (packaging/warren.service says why a
# static one); before the files, which name its group.
getent group warren >/dev/null || groupadd --system warren
getent passwd warren >/dev/null || useradd --system --gid warren \
    --home-dir /nonexistent --no-create-home --shell /sbin/nologin \
    --comment "warren AMQP proxy" warren
exit 0
