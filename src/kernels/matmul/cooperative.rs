//! The tensor-core variant: `matmul_cooperative`, generated per tile shape, multiplies
//! 16x16x16 tiles through WGSL's cooperative matrices (`wgpu_cooperative_matrix`: f16
//! inputs, f32 accumulators), on Vulkan adapters that report that shape.
//!
//! A workgroup is WX x WY subgroups; each owns TM x TN accumulator tiles of 16 x 16, so the
//! workgroup covers a block of (WY·TM·16) x (WX·TN·16) outputs. Per BK-deep slice of K, all
//! invocations stage op(A) as [BM][BK] and op(B) as [BK][BN] in workgroup memory, f16, zero
//! outside the matrices (so the 16 x 16 loads never leave the data, whatever M, N and K),
//! then every subgroup loads its tiles from there and multiplies. The epilogue goes through
//! a 16 x 16 f32 scratch per subgroup: a cooperative store, then each lane applies
//! `store()` (bias, GELU, residual, ...) to its share of the tile.

use std::fmt::Write;

use super::{Config, Layout, SHADER};

/// The side of a cooperative-matrix tile.
pub(super) const TILE: u32 = 16;

/// Workgroup memory the variant takes, in bytes: both staged slices in f16 and one f32
/// scratch tile per subgroup.
pub(super) fn shared_bytes(config: Config) -> u32 {
    let (bm, bn) = config.block();
    (bm + bn) * config.bk * 2 + config.wx * config.wy * TILE * TILE * 4
}

/// Full sources of the cooperative variant (every layout, two tile shapes, f16 and f32
/// outputs, every epilogue flag on), with their `enable` directives, for validation by
/// naga and translation to SPIR-V in the tests (no adapter here has cooperative matrices).
pub fn cooperative_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for config in [Config::cooperative(2, 2, 2, 2, 32), Config::cooperative(4, 2, 2, 1, 16)] {
        for layout in Layout::ALL {
            for output in ["f16", "f32"] {
                let (a_trans, b_trans) = layout.transposes();
                let flags = ["HAS_BIAS", "GELU", "STORE_PRE", "HAS_RESIDUAL", "ROW_SCALE", "ACCUMULATE"];
                let mut consts: Vec<(&str, String)> = flags.iter().map(|f| (*f, "true".to_string())).collect();
                consts.extend([("Operand", "f16".to_string()), ("Output", output.to_string())]);
                let source = format!(
                    "enable f16;\nenable wgpu_cooperative_matrix;\n{}{}",
                    crate::gpu::specialise(SHADER.source, &consts),
                    cooperative_source(config, a_trans, b_trans, 32, Tiles::Hardware)
                );
                out.push((format!("{} {} -> {output}", config.label(), layout.name()), source));
            }
        }
    }
    out
}

/// How the 16 x 16 tiles are multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiles {
    /// Cooperative matrices: the tensor cores.
    Hardware,
    /// The same kernel with each cooperative operation written out as plain loops, each
    /// lane of a virtual subgroup ([`EMULATED_SUBGROUP`] consecutive invocations) holding
    /// its share of every accumulator tile: runs on any adapter with f16, so that the
    /// staging, the tile placement and the epilogue are checked on machines without
    /// cooperative matrices. Assumes what the hardware path relies on: `coopLoadT` and
    /// `coopStoreT` address element (r, c) at `r * stride + c`.
    Emulated,
}

/// The virtual subgroup size of [`Tiles::Emulated`] (NVIDIA's warp).
pub(super) const EMULATED_SUBGROUP: u32 = 32;

/// Generates the `matmul_cooperative` entry point for subgroups of `subgroup` invocations.
/// Operands must be f16 (`Operand = f16`).
pub(super) fn cooperative_source(config: Config, a_trans: bool, b_trans: bool, subgroup: u32, tiles: Tiles) -> String {
    let Config { tm, tn, wx, wy, bk, .. } = config;
    let (bm, bn) = config.block();
    let threads = wx * wy * subgroup;
    // Emulated: each lane's elements of one tile, and where tile (i, j)'s start in `acc`.
    let share = TILE * TILE / subgroup;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "var<workgroup> coop_a: array<f16, {}>;", bm * bk);
    let _ = writeln!(w, "var<workgroup> coop_b: array<f16, {}>;", bk * bn);
    let _ = writeln!(w, "var<workgroup> coop_c: array<f32, {}>;", wx * wy * TILE * TILE);
    let _ = writeln!(w, "@compute @workgroup_size({threads})");
    let entry = "fn matmul_cooperative(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32";
    match tiles {
        Tiles::Hardware => {
            let subgroups = "@builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32";
            let _ = writeln!(w, "{entry}, {subgroups}) {{");
        }
        Tiles::Emulated => {
            let _ = writeln!(w, "{entry}) {{");
            let _ = writeln!(w, "    let sg = li / {subgroup}u;");
            let _ = writeln!(w, "    let lane = li % {subgroup}u;");
        }
    }
    let _ = writeln!(w, "    let batch = wg.z;");
    let _ = writeln!(w, "    let a_base = batch * p.batch_a + p.a_offset;");
    let _ = writeln!(w, "    let b_base = batch * p.batch_b + p.b_offset;");
    let _ = writeln!(w, "    let m0 = wg.y * {bm}u;");
    let _ = writeln!(w, "    let n0 = wg.x * {bn}u;");
    // The subgroup's first row and column within the block.
    let _ = writeln!(w, "    let sg_m = (sg / {wx}u) * {}u;", tm * TILE);
    let _ = writeln!(w, "    let sg_n = (sg % {wx}u) * {}u;", tn * TILE);
    match tiles {
        Tiles::Hardware => {
            for i in 0..tm {
                for j in 0..tn {
                    let _ = writeln!(w, "    var acc{i}_{j} = coop_mat16x16<f32, C>();");
                }
            }
        }
        Tiles::Emulated => {
            let _ = writeln!(w, "    var acc: array<f32, {}>;", tm * tn * share);
        }
    }
    let _ = writeln!(w, "    for (var k0 = 0u; k0 < p.k; k0 += {bk}u) {{");
    // Staging: the index that runs fastest across invocations follows the operand's
    // contiguous dimension in global memory, so neighbouring lanes read neighbouring
    // addresses. Out-of-range elements read a clamped address and store zero.
    let (a_row, a_k) = if a_trans {
        (format!("e % {bm}u"), format!("e / {bm}u"))
    } else {
        (format!("e / {bk}u"), format!("e % {bk}u"))
    };
    let a_slot = format!("row * {bk}u + kk");
    stage(w, "coop_a", (bm * bk, threads), (&a_row, &a_k), ("m0", "p.m"), &a_slot, "a[a_base + a_at(gr, gk)]");
    let (b_col, b_k) = if b_trans {
        (format!("e / {bk}u"), format!("e % {bk}u"))
    } else {
        (format!("e % {bn}u"), format!("e / {bn}u"))
    };
    let b_slot = format!("kk * {bn}u + row");
    stage(w, "coop_b", (bk * bn, threads), (&b_col, &b_k), ("n0", "p.n"), &b_slot, "b[b_base + b_at(gk, gr)]");
    let _ = writeln!(w, "        workgroupBarrier();");
    for kk in 0..bk / TILE {
        // Tile starts: A's rows of this subgroup at k-step kk, stride BK; B's columns, stride BN.
        let a_at = |i: u32| format!("(sg_m + {}u) * {bk}u + {}u", i * TILE, kk * TILE);
        let b_at = |j: u32| format!("{}u + sg_n + {}u", kk * TILE * bn, j * TILE);
        match tiles {
            Tiles::Hardware => {
                for i in 0..tm {
                    let load = format!("coopLoadT<coop_mat16x16<f16, A>>(&coop_a[{}], {bk}u)", a_at(i));
                    let _ = writeln!(w, "        let a{kk}_{i} = {load};");
                }
                for j in 0..tn {
                    let load = format!("coopLoadT<coop_mat16x16<f16, B>>(&coop_b[{}], {bn}u)", b_at(j));
                    let _ = writeln!(w, "        let b{kk}_{j} = {load};");
                }
                for i in 0..tm {
                    for j in 0..tn {
                        let _ = writeln!(w, "        acc{i}_{j} = coopMultiplyAdd(a{kk}_{i}, b{kk}_{j}, acc{i}_{j});");
                    }
                }
            }
            Tiles::Emulated => {
                for i in 0..tm {
                    for j in 0..tn {
                        let _ = writeln!(w, "        for (var q = 0u; q < {share}u; q++) {{");
                        let _ = writeln!(w, "            let e = lane + {subgroup}u * q;");
                        let _ = writeln!(w, "            var sum = acc[{}u + q];", (i * tn + j) * share);
                        let _ = writeln!(w, "            for (var t = 0u; t < {TILE}u; t++) {{");
                        let a = format!("coop_a[{} + (e / {TILE}u) * {bk}u + t]", a_at(i));
                        let b = format!("coop_b[{} + t * {bn}u + e % {TILE}u]", b_at(j));
                        let _ = writeln!(w, "                sum = fma(f32({a}), f32({b}), sum);");
                        let _ = writeln!(w, "            }}");
                        let _ = writeln!(w, "            acc[{}u + q] = sum;", (i * tn + j) * share);
                        let _ = writeln!(w, "        }}");
                    }
                }
            }
        }
    }
    let _ = writeln!(w, "        workgroupBarrier();");
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "    let scratch = sg * {}u;", TILE * TILE);
    for i in 0..tm {
        for j in 0..tn {
            match tiles {
                Tiles::Hardware => {
                    let _ = writeln!(w, "    coopStoreT(acc{i}_{j}, &coop_c[scratch], {TILE}u);");
                }
                Tiles::Emulated => {
                    let _ = writeln!(w, "    for (var q = 0u; q < {share}u; q++) {{");
                    let _ = writeln!(
                        w,
                        "        coop_c[scratch + lane + {subgroup}u * q] = acc[{}u + q];",
                        (i * tn + j) * share
                    );
                    let _ = writeln!(w, "    }}");
                }
            }
            let _ = writeln!(w, "    workgroupBarrier();");
            let _ = writeln!(w, "    for (var e = lane; e < {}u; e += {subgroup}u) {{", TILE * TILE);
            let row = format!("m0 + sg_m + {}u + e / {TILE}u", i * TILE);
            let column = format!("n0 + sg_n + {}u + e % {TILE}u", j * TILE);
            let _ = writeln!(w, "        store(batch, {row}, {column}, coop_c[scratch + e]);");
            let _ = writeln!(w, "    }}");
            let _ = writeln!(w, "    workgroupBarrier();");
        }
    }
    let _ = writeln!(w, "}}");
    s
}

/// Writes the loop in which `threads` invocations stage `count` elements of one operand into `array`: element e sits
/// at (`row`, `kk`) of the tile (`row` along M for A, along N for B), `origin`/`bound` place
/// the row in the matrix, `slot` is its index in `array` and `load` reads it at (gr, gk).
fn stage(
    w: &mut String,
    array: &str,
    (count, threads): (u32, u32),
    (row, kk): (&str, &str),
    (origin, bound): (&str, &str),
    slot: &str,
    load: &str,
) {
    let _ = writeln!(w, "        for (var e = li; e < {count}u; e += {threads}u) {{");
    let _ = writeln!(w, "            let row = {row};");
    let _ = writeln!(w, "            let kk = {kk};");
    let _ = writeln!(w, "            let inside = {origin} + row < {bound} && k0 + kk < p.k;");
    let _ = writeln!(w, "            let gr = min({origin} + row, {bound} - 1u);");
    let _ = writeln!(w, "            let gk = min(k0 + kk, p.k - 1u);");
    let _ = writeln!(w, "            {array}[{slot}] = select(f16(0.0), f16({load}), inside);");
    let _ = writeln!(w, "        }}");
}
