#!/bin/sh
# The official nginx image's start-up contract, for Debian's nginx. When the command is nginx:
# run /docker-entrypoint.d/*.sh (executable ones; *.envsh are sourced) in order, after
# rendering every $NGINX_ENVSUBST_TEMPLATE_DIR/**/*$NGINX_ENVSUBST_TEMPLATE_SUFFIX
# (/etc/nginx/templates, .template) into $NGINX_ENVSUBST_OUTPUT_DIR (/etc/nginx/conf.d) with
# envsubst. Only variables set in the environment (matching NGINX_ENVSUBST_FILTER, if set) are
# replaced, so nginx's own $variables stay.
set -eu

say() {
  [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$0: $*"
}

render_templates() {
  template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
  suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
  output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
  filter=${NGINX_ENVSUBST_FILTER:-}
  [ -d "$template_dir" ] || return 0
  if [ ! -w "$output_dir" ]; then
    say "ERROR: $template_dir exists, but $output_dir is not writable"
    return 0
  fi
  defined=$(printf '${%s} ' $(env | cut -d= -f1 | grep -E "${filter:-.}" || true))
  find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
    relative=${template#"$template_dir/"}
    output=$output_dir/${relative%"$suffix"}
    mkdir -p "$(dirname "$output")"
    say "Running envsubst on $template to $output"
    envsubst "$defined" <"$template" >"$output"
  done
}

if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
  render_templates
  if [ -d /docker-entrypoint.d ]; then
    for f in $(find /docker-entrypoint.d/ -follow -type f -print | sort -V); do
      case "$f" in
        *.envsh)
          if [ -x "$f" ]; then say "Sourcing $f"; . "$f"; else say "Ignoring $f, not executable"; fi
          ;;
        *.sh)
          if [ -x "$f" ]; then say "Launching $f"; "$f"; else say "Ignoring $f, not executable"; fi
          ;;
        *) say "Ignoring $f" ;;
      esac
    done
  fi
  say "Configuration complete; ready for start up"
fi

exec "$@"
