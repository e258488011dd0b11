# Sourced by the device scripts (gpu_bench.sh, gpu_schedules.sh): a Vulkan loader and the
# NVIDIA driver's ICD for wgpu. Without a loader on the system (`ldconfig -p` lists no
# libvulkan.so.1) it unpacks the Debian packages in DEBS (default: scripts/debs/*.deb, e.g.
# `apt-get download libvulkan1`) into a private folder. Expects `here` (the scripts folder).
# grep reads all of ldconfig's list: with -q it would quit early, and under pipefail the
# broken pipe would read as a missing loader.
if ! ldconfig -p | grep 'libvulkan.so.1' > /dev/null; then
    debs=(${DEBS:-$here/debs}/*.deb)
    [ -e "${debs[0]}" ] || { echo "error: no Vulkan loader on this machine and no .deb files in ${DEBS:-$here/debs}; put libvulkan1's package there (apt-get download libvulkan1)" >&2; return 1; }
    prefix=$(mktemp -d)
    for deb in "${debs[@]}"; do dpkg -x "$deb" "$prefix"; done
    export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
    echo "Vulkan loader unpacked from ${#debs[@]} package(s) into $prefix" >&2
fi
if [ -z "${VK_DRIVER_FILES:-}" ]; then
    for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
        /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
        if [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; break; fi
    done
fi
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}

