//! CIFAR-10, binary version: `data_batch_{1..5}.bin` (train) and `test_batch.bin` (val),
//! each a run of 3073-byte records (1 label byte, then 32×32 pixels as R, G, B planes).
//! The files are small (30 MB each), so they are read whole when opened.

use std::path::{Path, PathBuf};

use super::{DataError, LoadError, RgbImage, Source};

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
const RECORD: usize = 1 + 3 * PLANE;
const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
const VAL_FILE: &str = "test_batch.bin";
const NAMES_FILE: &str = "batches.meta.txt";
const DEFAULT_NAMES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// The folder holding the CIFAR-10 files: `root` itself or the `cifar-10-batches-bin/`
/// folder the archive unpacks to.
pub(super) fn find(root: &Path) -> Option<PathBuf> {
    [root.to_path_buf(), root.join("cifar-10-batches-bin")]
        .into_iter()
        .find(|dir| TRAIN_FILES.iter().chain([&VAL_FILE]).any(|f| dir.join(f).is_file()))
}

/// One split of CIFAR-10 in memory.
pub struct Cifar10 {
    classes: Vec<String>,
    /// (file name for messages, the file's records).
    files: Vec<(String, Vec<u8>)>,
    /// Index of the first record of each file, plus the total at the end.
    starts: Vec<usize>,
}

impl Cifar10 {
    /// Reads the (train, val) splits of the CIFAR-10 folder `dir`; val is `None` when
    /// `test_batch.bin` is absent. All five training batches must be there.
    pub fn open(dir: &Path) -> Result<(Cifar10, Option<Cifar10>), DataError> {
        let classes = class_names(dir)?;
        let missing: Vec<&str> = TRAIN_FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
        if !missing.is_empty() {
            return Err(DataError::BadLayout {
                path: dir.to_path_buf(),
                detail: format!(
                    "this CIFAR-10 folder lacks {}; unpack the complete cifar-10-binary archive there",
                    missing.join(", ")
                ),
            });
        }
        let train = Cifar10::read(dir, &TRAIN_FILES, &classes)?;
        let val = dir.join(VAL_FILE).is_file().then(|| Cifar10::read(dir, &[VAL_FILE], &classes)).transpose()?;
        Ok((train, val))
    }

    fn read(dir: &Path, names: &[&str], classes: &[String]) -> Result<Cifar10, DataError> {
        let mut files = Vec::new();
        let mut starts = vec![0];
        for name in names {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
            check_records(&bytes, classes.len()).map_err(|detail| DataError::NotCifar { path, detail })?;
            starts.push(starts[starts.len() - 1] + bytes.len() / RECORD);
            files.push((name.to_string(), bytes));
        }
        Ok(Cifar10 { classes: classes.to_vec(), files, starts })
    }

    /// (file, record within the file) of sample `index`.
    fn locate(&self, index: usize) -> (usize, usize) {
        assert!(index < self.len(), "CIFAR-10 index {index} out of range");
        let file = self.starts.partition_point(|&s| s <= index) - 1;
        (file, index - self.starts[file])
    }

    fn record(&self, index: usize) -> &[u8] {
        let (file, record) = self.locate(index);
        &self.files[file].1[record * RECORD..(record + 1) * RECORD]
    }
}

/// Checks that a CIFAR-10 file's bytes are whole records whose labels name one of
/// `classes` classes.
pub(crate) fn check_records(bytes: &[u8], classes: usize) -> Result<(), String> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(format!("size {} is not a multiple of {RECORD}", bytes.len()));
    }
    match bytes.chunks_exact(RECORD).position(|r| r[0] as usize >= classes) {
        Some(record) => {
            Err(format!("record {record} has label {}, there are {classes} classes", bytes[record * RECORD]))
        }
        None => Ok(()),
    }
}

/// Class names from `batches.meta.txt` (one per line) when present, else the standard ten.
fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let path = dir.join(NAMES_FILE);
    if !path.is_file() {
        return Ok(DEFAULT_NAMES.iter().map(|n| n.to_string()).collect());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.is_empty() {
        return Err(DataError::BadLayout {
            path,
            detail: "lists no class names; delete it to use the standard ten".into(),
        });
    }
    Ok(names)
}

impl Source for Cifar10 {
    fn len(&self) -> usize {
        self.starts[self.starts.len() - 1]
    }

    fn label(&self, index: usize) -> u32 {
        self.record(index)[0] as u32
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn load(&self, index: usize) -> Result<RgbImage, LoadError> {
        let planes = &self.record(index)[1..]; // [3, 32, 32]
        let mut data = Vec::with_capacity(3 * PLANE); // [32, 32, 3]
        for i in 0..PLANE {
            data.extend_from_slice(&[planes[i], planes[PLANE + i], planes[2 * PLANE + i]]);
        }
        Ok(RgbImage { width: SIDE, height: SIDE, data })
    }

    fn describe(&self, index: usize) -> String {
        let (file, record) = self.locate(index);
        format!("cifar:{}#{record}", self.files[file].0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::super::{open, Format};
    use super::*;

    /// A record of label `label` whose red plane is `label`, green `10 + i`, blue 200.
    fn record(label: u8, i: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(label, PLANE));
        r.extend(std::iter::repeat_n(10 + i, PLANE));
        r.extend(std::iter::repeat_n(200, PLANE));
        r
    }

    /// Writes the five train files (2 records each) and a test file (3 records) to `dir`.
    fn write_cifar(dir: &Path) {
        std::fs::create_dir_all(dir).expect("mkdir");
        for (f, name) in TRAIN_FILES.iter().enumerate() {
            let bytes: Vec<u8> = (0..2).flat_map(|i| record((2 * f + i) as u8 % 10, i as u8)).collect();
            std::fs::write(dir.join(name), bytes).expect("write fixture");
        }
        let bytes: Vec<u8> = (0..3).flat_map(|i| record(9 - i, i)).collect();
        std::fs::write(dir.join(VAL_FILE), bytes).expect("write fixture");
    }

    #[test]
    fn data_cifar_reads_records_and_detects_the_inner_folder() {
        let dir = TempDir::new("cifar");
        write_cifar(&dir.path().join("cifar-10-batches-bin"));
        let dataset = open(dir.path()).expect("valid CIFAR-10 folder");
        assert_eq!(dataset.format, Format::Cifar10);
        assert_eq!(dataset.classes().len(), 10);
        assert_eq!(dataset.classes()[9], "truck");
        let train = &dataset.train;
        assert_eq!(train.len(), 10);
        assert_eq!((0..10).map(|i| train.label(i)).collect::<Vec<_>>(), (0..10).collect::<Vec<u32>>());
        assert_eq!(train.describe(7), "cifar:data_batch_4.bin#1");
        let image = train.load(7).expect("in-memory records load");
        assert_eq!((image.width, image.height), (32, 32));
        assert_eq!(image.pixel(5, 30), [7, 11, 200]);
        let val = dataset.val.expect("test_batch.bin present");
        assert_eq!((val.len(), val.label(2)), (3, 7));
    }

    #[test]
    fn data_cifar_reads_class_names_and_rejects_bad_files() {
        let dir = TempDir::new("cifar-bad");
        write_cifar(dir.path());
        std::fs::write(dir.path().join(NAMES_FILE), "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n").expect("write fixture");
        assert_eq!(open(dir.path()).expect("valid").classes()[1], "b");

        let bad = dir.path().join("data_batch_2.bin");
        std::fs::write(&bad, vec![0u8; 1234]).expect("write fixture");
        let err = open(dir.path()).err().expect("bad size").to_string();
        assert!(err.starts_with(&format!("`{}` is not a CIFAR-10 file", bad.display())), "{err}");
        assert!(err.contains("(size 1234 is not a multiple of 3073)"), "{err}");

        std::fs::write(&bad, record(42, 0)).expect("write fixture");
        let err = open(dir.path()).err().expect("bad label").to_string();
        assert!(err.contains("record 0 has label 42, there are 10 classes"), "{err}");

        std::fs::remove_file(&bad).expect("rm");
        let err = open(dir.path()).err().expect("missing batch").to_string();
        assert!(err.contains("lacks data_batch_2.bin"), "{err}");
    }
}
