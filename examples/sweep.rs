use autoprog::kernels::matmul::{self, Config, Dims, Layout};
use autoprog::{ContextOptions, GpuContext};
fn main() {
    let ctx = GpuContext::new_blocking(&ContextOptions::default()).unwrap();
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1024);
    let dims = Dims { batch: 1, m: n, n, k: n };
    let mut cfgs = matmul::candidates(&ctx);
    cfgs = vec![
        Config::register(16, 8, 8),
        Config::register(8, 8, 8),
        Config::register(8, 16, 8),
        Config::register(16, 4, 8),
        Config::register(4, 16, 8),
        Config::register(16, 8, 4),
        Config::register(12, 8, 8),
    ];
    for layout in [Layout::NN] {
        for c in &cfgs {
            let ms = pollster::block_on(matmul::time_config(&ctx, layout, *c, dims, 3)).unwrap();
            println!(
                "{} {:<28} {:8.2} ms {:6.1} GF",
                layout.name(),
                c.label(),
                ms,
                2.0 * (n * n * n) as f64 / ms / 1e6
            );
        }
    }
}
