//! Python bindings of the firstlayer core (`firstlayer._core`).
//!
//! This is the only file that knows Python: each binding extracts its arguments, releases the GIL
//! around the pure-Rust kernel, and hands the result back as numpy arrays without copying.

pub mod error;
pub mod kernels;
pub mod parallel;

use numpy::{
    Complex64, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray3, PyReadonlyArray4,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::CoreError;
use crate::kernels::image::{Batch, Layout, Window};
use crate::kernels::moments::{self, Method, Moments, Pixel};
use crate::kernels::spectrum;

/// The core's errors as Python exceptions (`?` converts): dtype errors become `TypeError`, shape,
/// parameter and value errors `ValueError`, an interrupt the exception its signal handler raised
/// (`KeyboardInterrupt` for Ctrl-C).
impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> Self {
        match err {
            CoreError::DType { .. } => PyTypeError::new_err(err.to_string()),
            CoreError::Shape { .. } | CoreError::Param { .. } | CoreError::Value { .. } => {
                PyValueError::new_err(err.to_string())
            }
            CoreError::Interrupted => PENDING_SIGNAL
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| pyo3::exceptions::PyKeyboardInterrupt::new_err("interrupted")),
        }
    }
}

thread_local! {
    /// The exception a signal handler raised during a long call, until the call returns it.
    static PENDING_SIGNAL: std::cell::RefCell<Option<PyErr>> = const { std::cell::RefCell::new(None) };
}

/// The interrupt check the kernels run between pieces of work (`parallel::chunked_reduce`):
/// take the GIL for a moment and run Python's signal handlers. On the main thread a Ctrl-C
/// raises `KeyboardInterrupt` here; it is kept and re-raised when the call returns.
fn python_interrupted() -> bool {
    Python::attach(|py| match py.check_signals() {
        Ok(()) => false,
        Err(e) => {
            PENDING_SIGNAL.with(|p| *p.borrow_mut() = Some(e));
            true
        }
    })
}

/// A 4-D image batch of one of the supported dtypes, borrowed from numpy.
enum Images<'py> {
    U8(PyReadonlyArray4<'py, u8>),
    F32(PyReadonlyArray4<'py, f32>),
    F64(PyReadonlyArray4<'py, f64>),
}

fn describe(x: &Bound<'_, PyAny>) -> String {
    match (x.getattr("dtype"), x.getattr("shape")) {
        (Ok(d), Ok(s)) => format!("an array of dtype {d} and shape {s}"),
        _ => format!(
            "an object of type {}",
            x.get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ),
    }
}

fn images<'py>(x: &Bound<'py, PyAny>) -> PyResult<Images<'py>> {
    if let Ok(a) = x.extract::<PyReadonlyArray4<'py, u8>>() {
        return Ok(Images::U8(a));
    }
    if let Ok(a) = x.extract::<PyReadonlyArray4<'py, f32>>() {
        return Ok(Images::F32(a));
    }
    if let Ok(a) = x.extract::<PyReadonlyArray4<'py, f64>>() {
        return Ok(Images::F64(a));
    }
    Err(PyTypeError::new_err(format!(
        "x: expected a 4-D numpy array of uint8, float32 or float64, got {}",
        describe(x)
    )))
}

fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    a: &'a numpy::PyReadonlyArray<'_, T, D>,
    arg: &str,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        PyValueError::new_err(format!(
            "{arg}: expected a C-contiguous array, got strides {:?}; pass np.ascontiguousarray({arg})",
            a.strides()
        ))
    })
}

fn batch(shape: &[usize], layout: &str) -> PyResult<Batch> {
    let layout = match layout {
        "NCHW" => Layout::Nchw,
        "NHWC" => Layout::Nhwc,
        other => {
            return Err(
                CoreError::param("layout", "'NCHW' or 'NHWC'", format!("{other:?}")).into(),
            );
        }
    };
    let (n, c, h, w) = match layout {
        Layout::Nchw => (shape[0], shape[1], shape[2], shape[3]),
        Layout::Nhwc => (shape[0], shape[3], shape[1], shape[2]),
    };
    Ok(Batch { n, c, h, w, layout })
}

fn moments_dict<'py, T: numpy::Element + Copy>(
    py: Python<'py>,
    m: Moments<T>,
    exact: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let p = m.p;
    let n_classes = m.class_count.len();
    let d = PyDict::new(py);
    d.set_item("count", m.count)?;
    d.set_item("exact", exact)?;
    d.set_item("sum", PyArray1::from_vec(py, m.sum))?;
    d.set_item(
        "second_moment",
        PyArray1::from_vec(py, m.second).reshape([p, p])?,
    )?;
    d.set_item("class_counts", PyArray1::from_vec(py, m.class_count))?;
    d.set_item(
        "class_sums",
        PyArray1::from_vec(py, m.class_sum).reshape([n_classes, p])?,
    )?;
    Ok(d)
}

/// Raw patch moments of a C-contiguous 4-D batch: a dict with `count`, `sum`, `second_moment`,
/// `class_counts`, `class_sums` and `exact` (uint64 sums for uint8 input, float64 otherwise).
#[pyfunction]
#[pyo3(signature = (x, *, layout, kernel_size, stride = 1, padding = 0, labels = None, n_classes = 0, method = "auto", shift = None))]
#[allow(clippy::too_many_arguments)]
fn patch_moments<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    layout: &str,
    kernel_size: usize,
    stride: usize,
    padding: usize,
    labels: Option<PyReadonlyArray1<'py, i64>>,
    n_classes: usize,
    method: &str,
    shift: Option<Vec<f64>>,
) -> PyResult<Bound<'py, PyDict>> {
    let shift = shift.unwrap_or_default();
    let win = Window {
        k: kernel_size,
        stride,
        pad: padding,
    };
    let method = match method {
        "auto" => Method::Auto,
        "direct" => Method::Direct,
        "shifted" => Method::Shifted,
        other => {
            return Err(CoreError::param(
                "method",
                "'auto', 'direct' or 'shifted'",
                format!("{other:?}"),
            )
            .into());
        }
    };
    let labels_slice = labels
        .as_ref()
        .map(|l| contiguous(l, "labels"))
        .transpose()?;
    fn run<'py, T: Pixel + numpy::Element>(
        py: Python<'py>,
        a: &PyReadonlyArray4<'py, T>,
        layout: &str,
        win: Window,
        labels: Option<&[i64]>,
        n_classes: usize,
        method: Method,
        shift: &[f64],
    ) -> PyResult<Moments<<T::Acc as moments::Accum>::Total>> {
        let b = batch(a.shape(), layout)?;
        let x = contiguous(a, "x")?;
        Ok(py.detach(|| moments::patch_moments(x, b, win, labels, n_classes, method, shift))?)
    }
    match images(x)? {
        Images::U8(a) => {
            let m = run(py, &a, layout, win, labels_slice, n_classes, method, &shift)?;
            moments_dict(py, m, true)
        }
        Images::F32(a) => {
            let m = run(py, &a, layout, win, labels_slice, n_classes, method, &shift)?;
            moments_dict(py, m, false)
        }
        Images::F64(a) => {
            let m = run(py, &a, layout, win, labels_slice, n_classes, method, &shift)?;
            moments_dict(py, m, false)
        }
    }
}

/// 2D DFT over the last two axes of a C-contiguous float64 array of shape `(B, H, W)`.
#[pyfunction]
fn dft2<'py>(
    py: Python<'py>,
    x: PyReadonlyArray3<'py, f64>,
) -> PyResult<Bound<'py, numpy::PyArray3<Complex64>>> {
    let (n, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let data = contiguous(&x, "x")?;
    let out = py.detach(|| spectrum::dft2(data, n, h, w))?;
    PyArray1::from_vec(py, out).reshape([n, h, w])
}

/// Sum over images of the per-channel 2D power spectrum `|DFT2(x_c)|^2`, shape `(C, H, W)`.
#[pyfunction]
#[pyo3(signature = (x, *, layout))]
fn image_power_sum<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    layout: &str,
) -> PyResult<Bound<'py, numpy::PyArray3<f64>>> {
    fn run<'py, T: Pixel + numpy::Element>(
        py: Python<'py>,
        a: &PyReadonlyArray4<'py, T>,
        layout: &str,
    ) -> PyResult<Bound<'py, numpy::PyArray3<f64>>> {
        let b = batch(a.shape(), layout)?;
        let x = contiguous(a, "x")?;
        let out = py.detach(|| spectrum::power_sum(x, b))?;
        PyArray1::from_vec(py, out).reshape([b.c, b.h, b.w])
    }
    match images(x)? {
        Images::U8(a) => run(py, &a, layout),
        Images::F32(a) => run(py, &a, layout),
        Images::F64(a) => run(py, &a, layout),
    }
}

/// Writes patches of a C-contiguous 4-D batch into `out` (C-contiguous, `(rows, C*k*k)`, the
/// dtype of `x`) in `(c, i, j)` order, and their `(image, i, j)` into `positions` when given.
/// `plan`: `"all"` (rows `[start, end)` of every position), `"sample"` (`max_patches` drawn
/// without replacement over the batch) or `"per_image"` (`max_patches` per image, rows
/// `[start, end)`); `image_offset` is the global index of the first image.
#[pyfunction]
#[pyo3(signature = (x, out, *, layout, kernel_size, stride = 1, padding = 0, plan = "all", max_patches = 0, seed = 0, start = 0, end = None, image_offset = 0, positions = None))]
#[allow(clippy::too_many_arguments)]
fn extract_patches<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    layout: &str,
    kernel_size: usize,
    stride: usize,
    padding: usize,
    plan: &str,
    max_patches: u64,
    seed: u64,
    start: u64,
    end: Option<u64>,
    image_offset: u64,
    positions: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    use crate::kernels::extract::{self, Geometry, Plan};
    use numpy::{PyArray2, PyReadwriteArray2};

    fn writable<'py, T: numpy::Element>(
        a: &Bound<'py, PyAny>,
        arg: &str,
        dtype: &str,
    ) -> PyResult<PyReadwriteArray2<'py, T>> {
        let arr = a.extract::<Bound<'py, PyArray2<T>>>().map_err(|_| {
            PyTypeError::new_err(format!(
                "{arg}: expected a 2-D numpy array of dtype {dtype}, got {}",
                describe(a)
            ))
        })?;
        arr.try_readwrite().map_err(|e| {
            PyValueError::new_err(format!(
                "{arg}: expected a writeable array that shares no memory with x, got one that \
                 cannot be borrowed for writing ({e})"
            ))
        })
    }
    fn run<'py, T: Pixel + numpy::Element + Default>(
        py: Python<'py>,
        a: &PyReadonlyArray4<'py, T>,
        out: &Bound<'py, PyAny>,
        dtype: &str,
        (layout, win, plan, image_offset): (&str, Window, Plan, u64),
        positions: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        let b = batch(a.shape(), layout)?;
        let x = contiguous(a, "x")?;
        let mut out = writable::<T>(out, "out", dtype)?;
        let mut pos = positions
            .map(|p| writable::<i64>(p, "positions", "int64"))
            .transpose()?;
        let contiguous_mut = |arg: &str, strides: Vec<isize>| {
            PyValueError::new_err(format!(
                "{arg}: expected a C-contiguous array, got strides {strides:?}"
            ))
        };
        let out_strides = out.strides().to_vec();
        let out_slice = out
            .as_slice_mut()
            .map_err(|_| contiguous_mut("out", out_strides))?;
        let pos_slice = match pos.as_mut() {
            Some(p) => {
                let strides = p.strides().to_vec();
                Some(
                    p.as_slice_mut()
                        .map_err(|_| contiguous_mut("positions", strides))?,
                )
            }
            None => None,
        };
        Ok(py.detach(|| extract::extract(x, b, win, plan, image_offset, out_slice, pos_slice))?)
    }

    let win = Window {
        k: kernel_size,
        stride,
        pad: padding,
    };
    let shape_batch = |shape: &[usize]| -> PyResult<u64> {
        let b = batch(shape, layout)?;
        Ok(Geometry::new(b, win)?.total())
    };
    let x_shape: Vec<usize> = match images(x)? {
        Images::U8(a) => a.shape().to_vec(),
        Images::F32(a) => a.shape().to_vec(),
        Images::F64(a) => a.shape().to_vec(),
    };
    let plan = match plan {
        "all" => Plan::All {
            start,
            end: match end {
                Some(e) => e,
                None => shape_batch(&x_shape)?,
            },
        },
        "sample" => Plan::Sample {
            m: max_patches,
            seed,
        },
        "per_image" => Plan::PerImage {
            m: max_patches,
            seed,
            start,
            end: match end {
                Some(e) => e,
                None => {
                    let per = max_patches.min(shape_batch(&x_shape)? / x_shape[0].max(1) as u64);
                    per * x_shape[0] as u64
                }
            },
        },
        other => {
            return Err(CoreError::param(
                "plan",
                "'all', 'sample' or 'per_image'",
                format!("{other:?}"),
            )
            .into());
        }
    };
    let how = (layout, win, plan, image_offset);
    match images(x)? {
        Images::U8(a) => run(py, &a, out, "uint8", how, positions),
        Images::F32(a) => run(py, &a, out, "float32", how, positions),
        Images::F64(a) => run(py, &a, out, "float64", how, positions),
    }
}

/// Number of threads of the global pool (`RAYON_NUM_THREADS`, else the number of cores).
#[pyfunction]
fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// Decode image files (PNG, JPEG, BMP) in parallel with the GIL released: per path, a `uint8`
/// array `(H, W, 3)` (`(H, W)` when `grayscale`), or the reason the file could not be decoded.
/// `resize` (an int for the shorter side, or `(h, w)`) and `center_crop` follow torchvision.
#[pyfunction]
#[pyo3(signature = (paths, *, grayscale = false, resize = None, center_crop = None, threads = 0))]
fn decode_images<'py>(
    py: Python<'py>,
    paths: Vec<std::path::PathBuf>,
    grayscale: bool,
    resize: Option<&Bound<'py, PyAny>>,
    center_crop: Option<(usize, usize)>,
    threads: usize,
) -> PyResult<Bound<'py, pyo3::types::PyList>> {
    use crate::kernels::decode::{decode_files, DecodeOptions, Resize};
    let resize = match resize {
        None => None,
        Some(r) => Some(if let Ok(s) = r.extract::<usize>() {
            Resize::Shorter(s)
        } else if let Ok((h, w)) = r.extract::<(usize, usize)>() {
            Resize::Exact(h, w)
        } else {
            return Err(PyTypeError::new_err(format!(
                "resize: expected an int or a (height, width) pair, got {}",
                describe(r)
            )));
        }),
    };
    let zero = match resize {
        Some(Resize::Shorter(s)) => s == 0,
        Some(Resize::Exact(h, w)) => h == 0 || w == 0,
        None => false,
    };
    if zero || center_crop.is_some_and(|(h, w)| h == 0 || w == 0) {
        return Err(PyValueError::new_err(format!(
            "resize and center_crop must be positive, got resize={resize:?}, center_crop={center_crop:?}"
        )));
    }
    let opts = DecodeOptions {
        grayscale,
        resize,
        center_crop,
    };
    let results = py.detach(|| decode_files(&paths, &opts, threads));
    let out = pyo3::types::PyList::empty(py);
    for r in results {
        match r {
            Ok(d) => {
                let a = PyArray1::from_vec(py, d.data);
                if d.channels == 1 {
                    out.append(a.reshape([d.h, d.w])?)?;
                } else {
                    out.append(a.reshape([d.h, d.w, d.channels])?)?;
                }
            }
            Err(reason) => out.append(reason)?,
        }
    }
    Ok(out)
}

#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    use super::{
        decode_images, dft2, extract_patches, image_power_sum, num_threads, patch_moments,
    };

    #[pymodule_export]
    #[allow(non_upper_case_globals)] // Python's dunder name
    const __version__: &str = env!("CARGO_PKG_VERSION");

    /// Long calls check for Ctrl-C between their pieces of work.
    #[pymodule_init]
    fn init(_m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        crate::parallel::set_interrupt_hook(super::python_interrupted);
        Ok(())
    }
}
