//! Finite-difference gradient checks of the core ops on random inputs and odd sizes.
mod common;
use common::*;

#[test]
fn matmul_all_transposes() {
    for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (13, 50, 7), (50, 7, 77)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let a = randn(&if ta { [k, m] } else { [m, k] });
                let b = randn(&if tb { [n, k] } else { [k, n] });
                gradcheck(&format!("matmul {m}x{k}x{n} ta={ta} tb={tb}"), &[a, b], Check::default(), |g, x| g.matmul(&x[0], &x[1], ta, tb));
            }
        }
    }
}
