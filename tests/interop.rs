//! Conversions to and from other crates: static-rank `ndarray` arrays always; `nalgebra` and
//! `faer` matrices and NumPy files with their features (`cargo test --all-features`). Bad
//! ranks give errors naming the shape.

mod common;

use brainstate::Tensor;
#[cfg(any(feature = "nalgebra", feature = "faer"))]
use brainstate::{DType, hessian};
#[cfg(any(feature = "nalgebra", feature = "faer"))]
use common::assert_close;
use common::vals;

/// A small symmetric Hessian with known eigenvalues 1 and 3.
#[cfg(any(feature = "nalgebra", feature = "faer"))]
fn hessian_2x2() -> Tensor {
    let f = |x: &Tensor| {
        let (a, b) = (x.index(0, 0), x.index(0, 1));
        (a.powi(2) + b.powi(2)) + &a * &b
    };
    hessian(f)
        .call(&Tensor::from([0.3, -0.7]))
        .unwrap()
        .flat_matrix()
        .unwrap()
}

#[test]
fn ndarray_arrays_of_a_static_rank() {
    let m = Tensor::from([[1.0, 2.0], [3.0, 4.0]]);
    let a = m.to_ndarray2::<f64>().unwrap();
    assert_eq!(a, ndarray::array![[1.0, 2.0], [3.0, 4.0]]);
    assert_eq!(
        Tensor::from(a.t().to_owned()).to_vec::<f64>().unwrap(),
        vec![1.0, 3.0, 2.0, 4.0]
    );
    assert_eq!(
        m.index(0, 1).to_ndarray1::<i64>().unwrap(),
        ndarray::array![3, 4]
    );
    let err = Tensor::scalar(1.0).to_ndarray2::<f64>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "to_ndarray2: needs a 2-d tensor, got shape []"
    );
    let failed = Tensor::zeros(&[2]) + Tensor::zeros(&[3]);
    assert!(
        failed
            .to_ndarray2::<f64>()
            .unwrap_err()
            .to_string()
            .contains("[2] and [3]")
    );
}

#[cfg(feature = "nalgebra")]
#[test]
fn nalgebra_matrices_and_vectors() {
    let h = hessian_2x2();
    let m = h.to_dmatrix::<f64>().unwrap();
    assert_eq!(m, nalgebra::dmatrix![2.0, 1.0; 1.0, 2.0]);
    let mut eigenvalues: Vec<f64> = m
        .clone()
        .symmetric_eigen()
        .eigenvalues
        .iter()
        .copied()
        .collect();
    eigenvalues.sort_by(f64::total_cmp);
    assert_close(&eigenvalues, &[1.0, 3.0], 1e-14);
    // A Newton step solved by nalgebra goes back as a tensor.
    let g = Tensor::from([1.0, 2.0]).to_dvector::<f64>().unwrap();
    let step = m.clone().cholesky().unwrap().solve(&g);
    let step = Tensor::from_dvector(&step);
    assert_close(&vals(&h.matmul(&step)), &[1.0, 2.0], 1e-14);
    // Non-square, other dtypes, round trips.
    let r = Tensor::from([[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    let rm = r.to_dmatrix::<f32>().unwrap();
    assert_eq!((rm.nrows(), rm.ncols(), rm[(0, 2)]), (2, 3, 3.0));
    let back = Tensor::from_dmatrix(&rm);
    assert_eq!(
        (back.dtype().unwrap(), back.to_vec::<f32>().unwrap()),
        (DType::F32, r.to_vec::<f32>().unwrap())
    );
    assert_eq!(
        Tensor::zeros(&[3])
            .to_dmatrix::<f64>()
            .unwrap_err()
            .to_string(),
        "to_dmatrix: needs a 2-d tensor, got shape [3]"
    );
    assert_eq!(
        h.to_dvector::<f64>().unwrap_err().to_string(),
        "to_dvector: needs a 1-d tensor, got shape [2, 2]"
    );
}

#[cfg(feature = "faer")]
#[test]
fn faer_matrices_and_columns() {
    let h = hessian_2x2();
    let m = h.to_faer::<f64>().unwrap();
    assert_eq!((m.nrows(), m.ncols(), m[(0, 1)]), (2, 2, 1.0));
    let eigenvalues = m.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    assert_close(&eigenvalues, &[1.0, 3.0], 1e-14);
    let r = Tensor::from([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    let rm = r.to_faer::<f64>().unwrap();
    assert_eq!(rm[(1, 0)], 4.0);
    assert_eq!(vals(&Tensor::from_faer(rm.as_ref())), vals(&r));
    assert_eq!(
        vals(&Tensor::from_faer(rm.transpose())),
        vals(&r.transpose())
    );
    let c = Tensor::from([1.0, 2.0]).to_faer_col::<f64>().unwrap();
    assert_eq!(vals(&Tensor::from_faer_col(c.as_ref())), vec![1.0, 2.0]);
    assert_eq!(
        Tensor::zeros(&[2, 2, 1])
            .to_faer::<f64>()
            .unwrap_err()
            .to_string(),
        "to_faer: needs a 2-d tensor, got shape [2, 2, 1]"
    );
}

#[cfg(feature = "npy")]
mod npy {
    use std::path::PathBuf;

    use brainstate::{Complex64, DType, Node, Tensor, hessian, units::mV};

    use super::vals;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("brainstate_test_{}_{name}", std::process::id()))
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn every_dtype_round_trips_through_npy() {
        let cases = [
            Tensor::from([[1.5, -2.0], [0.0, 3.0]]),
            Tensor::from([1.5f32, 2.5]),
            Tensor::from([-3_i64, 4]),
            Tensor::from([true, false, true]),
            Tensor::from(vec![Complex64::new(1.0, -2.0)]),
            Tensor::from(vec![Complex64::new(0.5, 0.25)]).cast(DType::C64),
            Tensor::scalar(7.0),
        ];
        for (i, t) in cases.iter().enumerate() {
            let path = temp(&format!("{i}.npy"));
            t.save_npy(&path).unwrap();
            let back = Tensor::load_npy(&path).unwrap();
            assert_eq!(back.aval().unwrap(), t.aval().unwrap(), "case {i}");
            assert_eq!(
                back.to_vec::<Complex64>().unwrap(),
                t.to_vec::<Complex64>().unwrap()
            );
            let bytes = std::fs::read(&path).unwrap();
            assert!(bytes.starts_with(b"\x93NUMPY"), "case {i}: not a .npy file");
            std::fs::remove_file(path).unwrap();
        }
        // A quantity is stored as its numbers in its unit.
        let path = temp("quantity.npy");
        (Tensor::from([-65.0]) * mV).save_npy(&path).unwrap();
        let back = Tensor::load_npy(&path).unwrap();
        assert_eq!((back.unit(), vals(&back)), (None, vec![-65.0]));
        // A transposed (non-contiguous) tensor is written in logical order.
        let t = Tensor::from([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).transpose();
        t.save_npy(&path).unwrap();
        assert_eq!(vals(&Tensor::load_npy(&path).unwrap()), vals(&t));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn files_written_by_numpy_load() {
        let t = Tensor::load_npy(fixture("numpy_f64.npy")).unwrap();
        assert_eq!(t.shape().unwrap(), [2, 3]);
        assert_eq!(vals(&t), vec![1.5, -2.0, 3.25, 0.0, 4.0, -1.0]);
        let all = Node::load_npz(fixture("numpy_arrays.npz")).unwrap();
        let get = |k: &str| all[k].tensor().unwrap().clone();
        assert_eq!(vals(&get("matrix")), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(vals(&get("fortran")), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(get("single").dtype().unwrap(), DType::F32);
        let ints = get("small_ints");
        assert_eq!(
            (ints.dtype().unwrap(), ints.to_vec::<i64>().unwrap()),
            (DType::I64, vec![-3, 7])
        );
        assert_eq!(get("u16").to_vec::<i64>().unwrap(), vec![65535]);
        assert_eq!(get("mask").to_vec::<bool>().unwrap(), vec![true, false]);
        assert_eq!(
            get("z").to_vec::<Complex64>().unwrap(),
            vec![Complex64::new(1.0, 2.0), Complex64::new(0.0, -0.5)]
        );
    }

    #[test]
    fn results_save_as_npz_by_path() {
        let f = |x: &Tensor, y: &Tensor| (x * x * y).sum();
        let h = hessian(f)
            .argnums([0, 1])
            .call((&Tensor::from([1.0, 2.0]), &Tensor::scalar(3.0)))
            .unwrap();
        let path = temp("hessian.npz");
        h.save_npz(&path).unwrap();
        let back = Node::load_npz(&path).unwrap();
        let names: Vec<String> = match &back {
            Node::Map(entries) => entries.iter().map(|(k, _)| k.clone()).collect(),
            other => panic!("expected a map, got {other}"),
        };
        assert_eq!(names, ["0.0", "0.1", "1.0", "1.1"]);
        assert_eq!(
            vals(back["0.0"].tensor().unwrap()),
            vec![6.0, 0.0, 0.0, 6.0]
        );
        assert_eq!(vals(back["1.0"].tensor().unwrap()), vec![2.0, 4.0]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_files_are_errors_naming_them() {
        let err = Tensor::load_npy("/nonexistent/dir/x.npy").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("load_npy: /nonexistent/dir/x.npy: "),
            "{err}"
        );
        let path = temp("garbage.npy");
        std::fs::write(&path, b"not a numpy file").unwrap();
        assert!(
            Tensor::load_npy(&path)
                .unwrap_err()
                .to_string()
                .starts_with("load_npy:")
        );
        std::fs::remove_file(&path).unwrap();
        let err = Tensor::scalar(1.0)
            .save_npy("/nonexistent/dir/x.npy")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("save_npy: /nonexistent/dir/x.npy"),
            "{err}"
        );
        let failed = Tensor::zeros(&[2]) + Tensor::zeros(&[3]);
        assert!(
            failed
                .save_npy(temp("never.npy"))
                .unwrap_err()
                .to_string()
                .contains("[2] and [3]")
        );
    }
}
