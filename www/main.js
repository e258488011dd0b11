// Loads the wasm viewer and shows the adapter and a kernel self-check.
import init, { adapter_summary, kernel_selfcheck } from "./pkg/autoprog_viewer.js";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

async function main() {
  try {
    await init();
    if (!navigator.gpu) throw new Error("this browser has no WebGPU (navigator.gpu is missing)");
    $("adapter").textContent = JSON.stringify(JSON.parse(await adapter_summary()), null, 2);
    $("selfcheck").textContent = await kernel_selfcheck();
  } catch (e) {
    $("error").textContent = String(e);
    $("selfcheck").textContent = "failed";
  }
}

main();
