//! Kernel source generation: the `register` variant (every read mode) and the `blocked`
//! variant (fully unrolled shared-memory tiles), with the fused epilogue.

use super::{Config, Dims, Layout, Variant, SHADER};

/// Full sources of generated kernels (register: every read mode, a spread of tile
/// shapes; blocked: every layout), for validation by naga in the tests.
pub fn generated_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for config in [Config::register(8, 4, 8), Config::register(16, 8, 8), Config::register(3, 5, 4)] {
        for reads in [Reads::Scalar, Reads::Vec4N, Reads::Vec4NK, Reads::Vec4K] {
            if matches!(reads, Reads::Vec4N | Reads::Vec4NK) && !config.tn.is_multiple_of(4) {
                continue;
            }
            let source = crate::gpu::specialise(SHADER.source, &[]) + &register_source(config, reads);
            out.push((format!("{} {reads:?}", config.label()), source));
        }
    }
    for config in [Config::blocked(8, 8, 16, 16, 8), Config::blocked(4, 8, 8, 4, 8)] {
        for layout in Layout::ALL {
            let (a_trans, b_trans) = layout.transposes();
            let source = crate::gpu::specialise(SHADER.source, &[]) + &blocked_source(config, a_trans, b_trans);
            out.push((format!("{} {}", config.label(), layout.name()), source));
        }
    }
    out
}

/// Writes the epilogue: the accumulators go into a private array, then one loop
/// stores them through `store()`. Unrolling `store()` per output would multiply the
/// epilogue code (bias, GELU, residual) by TM x TN and make compilation very slow.
/// `row` and `column` are the WGSL expressions of output row i and column j.
fn write_epilogue(w: &mut String, tm: u32, tn: u32, outputs: &[String], row: &str, column: &str) {
    use std::fmt::Write;
    let _ = writeln!(w, "    var out: array<f32, {}>;", tm * tn);
    for (e, value) in outputs.iter().enumerate() {
        let _ = writeln!(w, "    out[{e}] = {value};");
    }
    let _ = writeln!(w, "    for (var e = 0u; e < {}u; e++) {{", tm * tn);
    let _ = writeln!(w, "        let i = e / {tn}u;");
    let _ = writeln!(w, "        let j = e % {tn}u;");
    let _ = writeln!(w, "        store(batch, {row}, {column}, out[e]);");
    let _ = writeln!(w, "    }}");
}

/// How the generated register kernel reads its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reads {
    /// Scalar loads: any shape.
    Scalar,
    /// B rows contiguous along n, read as vec4 (NN/TN with N % 4 == 0).
    Vec4N,
    /// As `Vec4N`, and A rows contiguous along k read as vec4, four k-steps per
    /// iteration (NN with K % 4 == 0).
    Vec4NK,
    /// A and B contiguous along k, read as vec4 four k-steps at a time (NT with K % 4 == 0).
    Vec4K,
}

pub(super) fn choose_reads(layout: Layout, config: Config, d: &Dims) -> Reads {
    match layout {
        Layout::NN if d.n.is_multiple_of(4) && d.k.is_multiple_of(4) && config.tn.is_multiple_of(4) => Reads::Vec4NK,
        Layout::NN | Layout::TN if d.n.is_multiple_of(4) && config.tn.is_multiple_of(4) => Reads::Vec4N,
        Layout::NT if d.k.is_multiple_of(4) => Reads::Vec4K,
        _ => Reads::Scalar,
    }
}

/// Shapes that allow no vec4 reads get at most an 8 x 8 register tile: with scalar
/// reads a large tile gains little and takes CPU adapters seconds to compile (every
/// load there expands to a per-lane loop).
pub(super) fn fit_scalar_reads(layout: Layout, config: Config, d: &Dims) -> Config {
    if config.variant == Variant::Register && choose_reads(layout, config, d) == Reads::Scalar {
        Config::register(config.tm.min(8), config.tn.min(8), config.wx)
    } else {
        config
    }
}

/// Generates the fully unrolled `matmul_register` entry point.
///
/// A workgroup is WX invocations in a row; all of them share the workgroup's TM rows,
/// so every A address depends only on the workgroup and k. Such loads are uniform,
/// which CPU adapters execute once per SIMD batch of invocations instead of once per
/// lane, and B (the divergent operand) is read as wide as the layout allows.
pub(super) fn register_source(config: Config, reads: Reads) -> String {
    use std::fmt::Write;
    let (tm, tn, wx) = (config.tm, config.tn, config.wx);
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "@compute @workgroup_size({wx}, 1)");
    let _ = writeln!(
        w,
        "fn matmul_register(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{"
    );
    let _ = writeln!(w, "    let batch = wg.z;");
    let _ = writeln!(w, "    let a_base = batch * p.batch_a + p.a_offset;");
    let _ = writeln!(w, "    let b_base = batch * p.batch_b + p.b_offset;");
    let _ = writeln!(w, "    let row0 = wg.y * {tm}u;");
    for i in 0..tm {
        let _ = writeln!(w, "    let r{i} = min(row0 + {i}u, p.m - 1u);");
    }
    match reads {
        Reads::Vec4N | Reads::Vec4NK => {
            let groups = tn / 4;
            let _ = writeln!(w, "    let g0 = wg.x * {}u + lid.x;", wx * groups);
            let _ = writeln!(w, "    let ngroups = p.n / 4u;");
            for j in 0..groups {
                let _ = writeln!(w, "    let c{j} = min(g0 + {}u, ngroups - 1u);", wx * j);
            }
            for i in 0..tm {
                for j in 0..groups {
                    let _ = writeln!(w, "    var acc{i}_{j} = vec4<f32>(0.0);");
                }
            }
            let _ = writeln!(w, "    let ldb4 = p.ldb / 4u;");
            let _ = writeln!(w, "    var bk = b_base / 4u;");
            if reads == Reads::Vec4NK {
                let _ = writeln!(w, "    for (var kk = 0u; kk < p.k; kk += 4u) {{");
                for i in 0..tm {
                    let _ = writeln!(w, "        let av{i} = vec4<f32>(a4[(a_base + r{i} * p.lda + kk) / 4u]);");
                }
                for (q, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                    for j in 0..groups {
                        let _ = writeln!(w, "        let bv{j}_{q} = vec4<f32>(b4[bk + c{j}]);");
                    }
                    for i in 0..tm {
                        for j in 0..groups {
                            let _ = writeln!(
                                w,
                                "        acc{i}_{j} = fma(vec4<f32>(av{i}.{comp}), bv{j}_{q}, acc{i}_{j});"
                            );
                        }
                    }
                    let _ = writeln!(w, "        bk += ldb4;");
                }
            } else {
                let _ = writeln!(w, "    for (var kk = 0u; kk < p.k; kk++) {{");
                for i in 0..tm {
                    let _ = writeln!(w, "        let av{i} = vec4<f32>(f32(a[a_base + a_at(r{i}, kk)]));");
                }
                for j in 0..groups {
                    let _ = writeln!(w, "        let bv{j} = vec4<f32>(b4[bk + c{j}]);");
                }
                for i in 0..tm {
                    for j in 0..groups {
                        let _ = writeln!(w, "        acc{i}_{j} = fma(av{i}, bv{j}, acc{i}_{j});");
                    }
                }
                let _ = writeln!(w, "        bk += ldb4;");
            }
            let _ = writeln!(w, "    }}");
            let outputs: Vec<String> = (0..tm)
                .flat_map(|i| {
                    (0..groups * 4).map(move |j| format!("acc{i}_{}.{}", j / 4, ["x", "y", "z", "w"][(j % 4) as usize]))
                })
                .collect();
            let column = format!("(g0 + {wx}u * (j / 4u)) * 4u + j % 4u");
            write_epilogue(w, tm, tn, &outputs, "row0 + i", &column);
        }
        Reads::Vec4K | Reads::Scalar => {
            let _ = writeln!(w, "    let col0 = wg.x * {}u + lid.x;", wx * tn);
            for j in 0..tn {
                let _ = writeln!(w, "    let c{j} = min(col0 + {}u, p.n - 1u);", wx * j);
            }
            for i in 0..tm {
                for j in 0..tn {
                    let _ = writeln!(w, "    var acc{i}_{j} = 0.0;");
                }
            }
            if reads == Reads::Vec4K {
                // A is [M, K] and B is [N, K]: both rows are contiguous along k.
                let _ = writeln!(w, "    for (var kk = 0u; kk < p.k; kk += 4u) {{");
                for i in 0..tm {
                    let _ = writeln!(w, "        let av{i} = vec4<f32>(a4[(a_base + r{i} * p.lda + kk) / 4u]);");
                }
                for j in 0..tn {
                    let _ = writeln!(w, "        let bv{j} = vec4<f32>(b4[(b_base + c{j} * p.ldb + kk) / 4u]);");
                }
                for i in 0..tm {
                    for j in 0..tn {
                        let _ = writeln!(w, "        acc{i}_{j} += dot(av{i}, bv{j});");
                    }
                }
            } else {
                let _ = writeln!(w, "    for (var kk = 0u; kk < p.k; kk++) {{");
                for i in 0..tm {
                    let _ = writeln!(w, "        let av{i} = f32(a[a_base + a_at(r{i}, kk)]);");
                }
                for j in 0..tn {
                    let _ = writeln!(w, "        let bv{j} = f32(b[b_base + b_at(kk, c{j})]);");
                }
                for i in 0..tm {
                    for j in 0..tn {
                        let _ = writeln!(w, "        acc{i}_{j} = fma(av{i}, bv{j}, acc{i}_{j});");
                    }
                }
            }
            let _ = writeln!(w, "    }}");
            let outputs: Vec<String> = (0..tm).flat_map(|i| (0..tn).map(move |j| format!("acc{i}_{j}"))).collect();
            write_epilogue(w, tm, tn, &outputs, "row0 + i", &format!("col0 + {wx}u * j"));
        }
    }
    let _ = writeln!(w, "}}");
    s
}

/// Generates the fully unrolled `matmul_blocked` entry point.
///
/// The workgroup computes a BM x BN block of C (BM = WY·TM, BN = WX·TN). Workgroup
/// memory holds one BK-deep slice of op(A) as [BK][BM] and of op(B) as [BK][BN], both
/// as vec4 along M and N, so an invocation reads its TM rows and TN columns of one k-step
/// with TM/4 + TN/4 vec4 loads. An invocation owns rows `(ty + WY·g)·4 + q` and columns
/// `(tx + WX·g)·4 + q`: neighbouring invocations read neighbouring vec4s, without bank
/// conflicts. While a slice is multiplied, the next one is loaded from global memory into
/// registers, so global latency hides behind the multiply-adds.
///
/// Staging: every invocation loads whole groups of four elements that are neighbours in
/// the tile's vec4 direction (M for A, N for B). Which tile index runs fastest across
/// invocations follows the operand's contiguous dimension in global memory, so a warp's
/// loads always cover consecutive addresses.
pub(super) fn blocked_source(config: Config, a_trans: bool, b_trans: bool) -> String {
    use std::fmt::Write;
    let Config { tm, tn, wx, wy, bk, .. } = config;
    let threads = wx * wy;
    let (bm, bn) = config.block();
    let (bm4, bn4) = (bm / 4, bn / 4);
    let (groups_a, groups_b) = (bm4 * bk / threads, bn4 * bk / threads);
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "var<workgroup> blk_a: array<vec4<f32>, {}>;", bk * bm4);
    let _ = writeln!(w, "var<workgroup> blk_b: array<vec4<f32>, {}>;", bk * bn4);
    let _ = writeln!(w, "@compute @workgroup_size({wx}, {wy})");
    let _ = writeln!(
        w,
        "fn matmul_blocked(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, \
         @builtin(local_invocation_index) li: u32) {{"
    );
    let _ = writeln!(w, "    let batch = wg.z;");
    let _ = writeln!(w, "    let a_base = batch * p.batch_a + p.a_offset;");
    let _ = writeln!(w, "    let b_base = batch * p.batch_b + p.b_offset;");
    let _ = writeln!(w, "    let m0 = wg.y * {bm}u;");
    let _ = writeln!(w, "    let n0 = wg.x * {bn}u;");
    // Where each staged group sits in the tile: (k within the slice, vec4 index along M/N).
    // `contiguous_k`: the operand's rows run along k in memory, so k runs fastest.
    let place = |w: &mut String, name: &str, g: u32, span4: u32, contiguous_k: bool| {
        let _ = writeln!(w, "    let {name}e{g} = li + {}u;", g * threads);
        if contiguous_k {
            let _ = writeln!(w, "    let {name}k{g} = {name}e{g} % {bk}u;");
            let _ = writeln!(w, "    let {name}v{g} = {name}e{g} / {bk}u;");
        } else {
            let _ = writeln!(w, "    let {name}k{g} = {name}e{g} / {span4}u;");
            let _ = writeln!(w, "    let {name}v{g} = {name}e{g} % {span4}u;");
        }
    };
    for g in 0..groups_a {
        place(w, "sa", g, bm4, !a_trans);
    }
    for g in 0..groups_b {
        place(w, "sb", g, bn4, b_trans);
    }
    // Staging registers, loaded for the slice starting at k0.
    for g in 0..groups_a {
        let _ = writeln!(w, "    var la{g} = vec4<f32>(0.0);");
    }
    for g in 0..groups_b {
        let _ = writeln!(w, "    var lb{g} = vec4<f32>(0.0);");
    }
    // One operand's staging loads for the slice at `k0`: register `{reg}{g}` takes the four
    // elements of group g, indices clamped into the matrix and zeros selected outside it.
    let load_operand = |w: &mut String,
                        k0: &str,
                        reg: &str,
                        place: &str,
                        groups: u32,
                        origin: &str,
                        bound: &str,
                        element: &dyn Fn(&str) -> String| {
        for g in 0..groups {
            let _ = writeln!(w, "        {{");
            let _ = writeln!(w, "            let gk = {k0} + {place}k{g};");
            let _ = writeln!(w, "            let kc = min(gk, p.k - 1u);");
            let comps: Vec<String> = (0..4)
                .map(|q| {
                    let index = format!("{origin} + {place}v{g} * 4u + {q}u");
                    let value = element(&format!("min({index}, {bound} - 1u)"));
                    format!("select(0.0, {value}, {index} < {bound} && gk < p.k)")
                })
                .collect();
            let _ = writeln!(w, "            {reg}{g} = vec4<f32>({});", comps.join(", "));
            let _ = writeln!(w, "        }}");
        }
    };
    let load = |w: &mut String, k0: &str| {
        load_operand(w, k0, "la", "sa", groups_a, "m0", "p.m", &|row| format!("f32(a[a_base + a_at({row}, kc)])"));
        load_operand(w, k0, "lb", "sb", groups_b, "n0", "p.n", &|col| format!("f32(b[b_base + b_at(kc, {col})])"));
    };
    load(w, "0u");
    for i in 0..tm {
        for j in 0..tn / 4 {
            let _ = writeln!(w, "    var acc{i}_{j} = vec4<f32>(0.0);");
        }
    }
    let _ = writeln!(w, "    for (var k0 = 0u; k0 < p.k; k0 += {bk}u) {{");
    for g in 0..groups_a {
        let _ = writeln!(w, "        blk_a[sak{g} * {bm4}u + sav{g}] = la{g};");
    }
    for g in 0..groups_b {
        let _ = writeln!(w, "        blk_b[sbk{g} * {bn4}u + sbv{g}] = lb{g};");
    }
    let _ = writeln!(w, "        workgroupBarrier();");
    // Past the end of K the loads read clamped addresses and select zeros: harmless.
    load(w, &format!("k0 + {bk}u"));
    for kk in 0..bk {
        for g in 0..tm / 4 {
            let _ = writeln!(w, "        let a{kk}_{g} = blk_a[{}u + lid.y];", kk * bm4 + g * wy);
        }
        for g in 0..tn / 4 {
            let _ = writeln!(w, "        let b{kk}_{g} = blk_b[{}u + lid.x];", kk * bn4 + g * wx);
        }
        for i in 0..tm {
            let comp = ["x", "y", "z", "w"][(i % 4) as usize];
            for j in 0..tn / 4 {
                let _ =
                    writeln!(w, "        acc{i}_{j} = fma(vec4<f32>(a{kk}_{}.{comp}), b{kk}_{j}, acc{i}_{j});", i / 4);
            }
        }
    }
    let _ = writeln!(w, "        workgroupBarrier();");
    let _ = writeln!(w, "    }}");
    let outputs: Vec<String> = (0..tm)
        .flat_map(|i| (0..tn).map(move |j| format!("acc{i}_{}.{}", j / 4, ["x", "y", "z", "w"][(j % 4) as usize])))
        .collect();
    let row = format!("m0 + (lid.y + {wy}u * (i / 4u)) * 4u + i % 4u");
    let column = format!("n0 + (lid.x + {wx}u * (j / 4u)) * 4u + j % 4u");
    write_epilogue(w, tm, tn, &outputs, &row, &column);
    let _ = writeln!(w, "}}");
    s
}
