# Shared by run.sh and test.sh: makes sure a GPU adapter exists (installing the
# software Vulkan driver lavapipe when run as root on Debian/Ubuntu) and sets the
# environment the GPU stack wants. Source it; it defines `need_software_vulkan`,
# `install_packages` and `lavapipe_icd`.

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d /tmp/autoprog-xdg.XXXXXX)}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Installs Debian packages if missing; as non-root, explains what to run instead.
install_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "error: missing packages: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
        return 1
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Path of lavapipe's Vulkan ICD manifest, if installed.
lavapipe_icd() {
    ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n 1
}

# Installs lavapipe (Vulkan on the CPU) and the Vulkan loader.
need_software_vulkan() {
    install_packages mesa-vulkan-drivers libvulkan1
}
