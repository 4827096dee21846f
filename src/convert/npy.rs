//! NumPy's `.npy` and `.npz` files (feature `npy`), through `ndarray-npy`.
//!
//! Tensors are written in their dtype (`f64` as `<f8`, `c128` as `<c16`, ...) and read back
//! in the dtype of the file; integers narrower than 64 bits are read as `i64`. Units are not
//! stored: a quantity is written as the numbers counted in its unit.

use std::fs::File;
use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::{NpzReader, NpzWriter, ReadNpyError, ReadNpzError, ReadableElement};
use num_complex::{Complex32, Complex64};

use crate::error::{Error, Result};
use crate::storage::{Data, with_array};
use crate::tensor::Tensor;
use crate::tree::Node;

/// An I/O error of `op` on the file at `path`.
fn io_error(op: &str, path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Io {
        op: op.to_string(),
        path: path.display().to_string(),
        msg: error.to_string(),
    }
}

/// Where arrays are read from: a `.npy` file, or one array of a `.npz` file.
trait Source {
    /// The array, if the file holds elements of type `T`; `Err` with the file's descriptor
    /// when it holds another type.
    fn read<T: ReadableElement>(&mut self) -> Result<std::result::Result<ArrayD<T>, String>>;
}

/// The descriptor of a file that holds another element type, or the error.
fn wrong_type(error: ReadNpyError) -> std::result::Result<String, ReadNpyError> {
    match error {
        ReadNpyError::WrongDescriptor(descr) => Ok(descr.to_string()),
        other => Err(other),
    }
}

struct NpyFile<'a> {
    path: &'a Path,
}

impl Source for NpyFile<'_> {
    fn read<T: ReadableElement>(&mut self) -> Result<std::result::Result<ArrayD<T>, String>> {
        match ndarray_npy::read_npy::<_, ArrayD<T>>(self.path) {
            Ok(array) => Ok(Ok(array)),
            Err(e) => wrong_type(e)
                .map(Err)
                .map_err(|e| io_error("load_npy", self.path, e)),
        }
    }
}

struct NpzEntry<'a> {
    path: &'a Path,
    reader: &'a mut NpzReader<File>,
    name: &'a str,
}

impl Source for NpzEntry<'_> {
    fn read<T: ReadableElement>(&mut self) -> Result<std::result::Result<ArrayD<T>, String>> {
        match self.reader.by_name::<_, ndarray::IxDyn>(self.name) {
            Ok(array) => Ok(Ok(array)),
            Err(ReadNpzError::Npy(e)) => wrong_type(e)
                .map(Err)
                .map_err(|e| io_error("load_npz", self.path, format!("{}: {e}", self.name))),
            Err(e) => Err(io_error(
                "load_npz",
                self.path,
                format!("{}: {e}", self.name),
            )),
        }
    }
}

/// The array of `source`, whatever its element type.
fn read_tensor(op: &str, path: &Path, source: &mut impl Source) -> Result<Tensor> {
    macro_rules! attempt {
        ($($t:ty => $wrap:expr),* $(,)?) => {{
            // The file's descriptor, reported if no type fits.
            let mut descr: Option<String> = None;
            $(
                match source.read::<$t>()? {
                    Ok(array) => return Ok(Tensor::from_ndarray($wrap(array))),
                    Err(d) => {
                        descr.get_or_insert(d);
                    }
                }
            )*
            descr.unwrap_or_default()
        }};
    }
    let descr = attempt!(
        f64 => |a: ArrayD<f64>| a,
        f32 => |a: ArrayD<f32>| a,
        i64 => |a: ArrayD<i64>| a,
        bool => |a: ArrayD<bool>| a,
        Complex64 => |a: ArrayD<Complex64>| a,
        Complex32 => |a: ArrayD<Complex32>| a,
        i32 => |a: ArrayD<i32>| a.mapv(i64::from),
        u32 => |a: ArrayD<u32>| a.mapv(i64::from),
        i16 => |a: ArrayD<i16>| a.mapv(i64::from),
        u16 => |a: ArrayD<u16>| a.mapv(i64::from),
        i8 => |a: ArrayD<i8>| a.mapv(i64::from),
        u8 => |a: ArrayD<u8>| a.mapv(i64::from),
    );
    Err(io_error(
        op,
        path,
        format!(
            "unsupported element type {descr} (supported: float64, float32, complex128, \
             complex64, bool, and integers up to 64 bits)"
        ),
    ))
}

impl Tensor {
    /// Writes the values to a NumPy `.npy` file (as counted in the tensor's unit, which is not
    /// stored). `numpy.load(path)` reads it.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let path = std::env::temp_dir().join("brainstate_doc_save_npy.npy");
    /// Tensor::from([[1.0, 2.0], [3.0, 4.0]]).save_npy(&path).unwrap();
    /// let back = Tensor::load_npy(&path).unwrap();
    /// assert_eq!(back.to_vec::<f64>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    /// ```
    pub fn save_npy(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let data: &Data = self.data()?;
        with_array!(data, a => ndarray_npy::write_npy(path, a))
            .map_err(|e| io_error("save_npy", path, e))
    }

    /// Reads a NumPy `.npy` file, in the dtype it holds (integers narrower than 64 bits as
    /// `i64`).
    ///
    /// ```
    /// use brainstate::{DType, Tensor};
    /// let path = std::env::temp_dir().join("brainstate_doc_load_npy.npy");
    /// Tensor::from([1_i64, 2, 3]).save_npy(&path).unwrap();
    /// assert_eq!(Tensor::load_npy(&path).unwrap().dtype().unwrap(), DType::I64);
    /// assert!(Tensor::load_npy("no/such/file.npy").is_err());
    /// ```
    pub fn load_npy(path: impl AsRef<Path>) -> Result<Tensor> {
        let path = path.as_ref();
        read_tensor("load_npy", path, &mut NpyFile { path })
    }
}

impl Node {
    /// Writes every leaf to one NumPy `.npz` file, named by its path in the tree: indices and
    /// keys joined by dots (`h[0][1]` is `"0.1"`, `h["a"]["b"]` is `"a.b"`); a single tensor
    /// is `"arr_0"`, as `numpy.savez` names it. `numpy.load(path)` reads it as a dict.
    ///
    /// ```
    /// use brainstate::{hessian, Node, Tensor};
    /// let f = |x: &Tensor, y: &Tensor| (x * y).sum();
    /// let h = hessian(f).argnums([0, 1]).call((&Tensor::from([1.0]), &Tensor::from([2.0]))).unwrap();
    /// let path = std::env::temp_dir().join("brainstate_doc_save_npz.npz");
    /// h.save_npz(&path).unwrap();
    /// let back = Node::load_npz(&path).unwrap();
    /// assert_eq!(back["0.1"].tensor().unwrap().to_vec::<f64>().unwrap(), vec![1.0]);
    /// ```
    pub fn save_npz(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut entries = Vec::new();
        named_leaves(self, "", &mut entries);
        if let [(name, _)] = entries.as_mut_slice()
            && name.is_empty()
        {
            *name = "arr_0".to_string();
        }
        let file = File::create(path).map_err(|e| io_error("save_npz", path, e))?;
        let mut npz = NpzWriter::new(file);
        for (name, tensor) in &entries {
            let data: &Data = tensor.data()?;
            with_array!(data, a => npz.add_array(name.as_str(), a))
                .map_err(|e| io_error("save_npz", path, e))?;
        }
        npz.finish().map_err(|e| io_error("save_npz", path, e))?;
        Ok(())
    }

    /// Reads a NumPy `.npz` file as a map from array names to tensors, in name order.
    ///
    /// ```
    /// use brainstate::{Node, Tensor};
    /// let path = std::env::temp_dir().join("brainstate_doc_load_npz.npz");
    /// Node::Leaf(Tensor::from([1.0f32])).save_npz(&path).unwrap();
    /// let back = Node::load_npz(&path).unwrap();
    /// assert_eq!(back["arr_0"].tensor().unwrap().to_vec::<f32>().unwrap(), vec![1.0]);
    /// ```
    pub fn load_npz(path: impl AsRef<Path>) -> Result<Node> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| io_error("load_npz", path, e))?;
        let mut reader = NpzReader::new(file).map_err(|e| io_error("load_npz", path, e))?;
        let mut names = reader.names().map_err(|e| io_error("load_npz", path, e))?;
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let mut entry = NpzEntry {
                path,
                reader: &mut reader,
                name: &name,
            };
            let tensor = read_tensor("load_npz", path, &mut entry)?;
            entries.push((name, Node::Leaf(tensor)));
        }
        Ok(Node::Map(entries))
    }
}

/// The leaves of `node` with their dotted paths below `path`.
fn named_leaves(node: &Node, path: &str, out: &mut Vec<(String, Tensor)>) {
    let join = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    match node {
        Node::Leaf(t) => out.push((path.to_string(), t.clone())),
        Node::Tuple(c) | Node::List(c) => {
            for (i, child) in c.iter().enumerate() {
                named_leaves(child, &join(&i.to_string()), out);
            }
        }
        Node::Map(c) => {
            for (k, child) in c {
                named_leaves(child, &join(k), out);
            }
        }
        Node::Struct { fields, .. } => {
            for (k, child) in fields {
                named_leaves(child, &join(k), out);
            }
        }
    }
}
