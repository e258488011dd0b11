//! Image folders: `ROOT/train/<class>/*` and `ROOT/val/<class>/*`, or class folders
//! directly under `ROOT` (train only). Files are listed up front and decoded lazily.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{decode_image, visible_entries, DataError, LoadError, RgbImage, Source};

/// Extensions of the formats our `image` build decodes (lower case).
const IMAGE_EXTENSIONS: [&str; 16] =
    ["png", "jpg", "jpeg", "jpe", "gif", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pnm", "tga", "ico", "qoi"];

/// Names accepted for the validation split folder, in order of preference.
const VAL_FOLDERS: [&str; 3] = ["val", "valid", "validation"];

/// One split of an image-folder dataset: (file, label) pairs in sorted order.
pub struct ImageFolder {
    classes: Vec<String>,
    samples: Vec<(PathBuf, u32)>,
}

impl ImageFolder {
    /// Opens `root` and returns its (train, val) splits; val is `None` when `root` holds
    /// class folders directly or has no val folder.
    pub fn open(root: &Path) -> Result<(ImageFolder, Option<ImageFolder>), DataError> {
        let entries = visible_entries(root)?;
        if entries.is_empty() {
            return Err(DataError::EmptyFolder { path: root.to_path_buf() });
        }
        let train_dir = root.join("train");
        if train_dir.is_dir() {
            let classes = class_folders(&train_dir)?;
            if classes.is_empty() {
                return Err(DataError::UnknownLayout { path: train_dir });
            }
            let train = ImageFolder::scan(&train_dir, &classes, &classes)?;
            let val = match VAL_FOLDERS.iter().map(|name| root.join(name)).find(|dir| dir.is_dir()) {
                Some(val_dir) => {
                    let val_classes = class_folders(&val_dir)?;
                    if let Some(stray) = val_classes.iter().find(|c| !classes.contains(c)) {
                        return Err(DataError::BadLayout {
                            path: val_dir.join(stray),
                            detail: format!(
                                "class `{stray}` is in the val folder but not in `{}`; give both splits the same class \
                                    folders",
                                train_dir.display()
                            ),
                        });
                    }
                    Some(ImageFolder::scan(&val_dir, &val_classes, &classes)?)
                }
                None => None,
            };
            return Ok((train, val));
        }
        let classes = class_folders(root)?;
        if classes.is_empty() {
            return Err(DataError::UnknownLayout { path: root.to_path_buf() });
        }
        Ok((ImageFolder::scan(root, &classes, &classes)?, None))
    }

    /// Lists the images of `present` class folders of `dir`; labels index `all_classes`.
    fn scan(dir: &Path, present: &[String], all_classes: &[String]) -> Result<ImageFolder, DataError> {
        let mut samples = Vec::new();
        for class in present {
            let label = all_classes.iter().position(|c| c == class).expect("present classes are a subset") as u32;
            let class_dir = dir.join(class);
            let before = samples.len();
            collect_images(&class_dir, label, &mut samples, &mut HashSet::new())?;
            if samples.len() == before {
                return Err(DataError::EmptyClass { path: class_dir });
            }
        }
        Ok(ImageFolder { classes: all_classes.to_vec(), samples })
    }
}

/// Sorted names of the visible subfolders of `dir`.
fn class_folders(dir: &Path) -> Result<Vec<String>, DataError> {
    Ok(visible_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect())
}

/// Adds the images under `dir` (recursively, sorted, hidden entries and other files
/// skipped) with `label` to `samples`. Symlinked folders are followed once each (`visited`
/// holds the canonical folders seen), so a link to a parent cannot loop forever.
fn collect_images(
    dir: &Path,
    label: u32,
    samples: &mut Vec<(PathBuf, u32)>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), DataError> {
    if !visited.insert(dir.canonicalize().map_err(|e| DataError::io(dir, e))?) {
        return Ok(());
    }
    for path in visible_entries(dir)? {
        if path.is_dir() {
            collect_images(&path, label, samples, visited)?;
        } else if is_image_file(&path) {
            samples.push((path, label));
        }
    }
    Ok(())
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|known| e.eq_ignore_ascii_case(known)))
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn label(&self, index: usize) -> u32 {
        self.samples[index].1
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn load(&self, index: usize) -> Result<RgbImage, LoadError> {
        let path = &self.samples[index].0;
        let fail = |reason: String| LoadError { what: path.display().to_string(), reason };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        decode_image(&bytes, path).map_err(fail)
    }

    fn describe(&self, index: usize) -> String {
        self.samples[index].0.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{gradient, image_folder_fixture, save, TempDir};
    use super::super::{open, Format};

    #[test]
    fn data_image_folder_lists_classes_and_decodes_lazily() {
        let dir = TempDir::new("folder");
        let root = image_folder_fixture(&dir);
        let dataset = open(&root).expect("valid image folder");
        assert_eq!(dataset.format, Format::ImageFolder);
        assert_eq!(dataset.classes(), ["cat", "dog"]);
        let train = &dataset.train;
        // cat: a.png, b.jpg, broken.png; dog: c.PNG, gray.png, truncated.png (txt and hidden skipped).
        let names: Vec<String> = (0..train.len()).map(|i| train.describe(i)).collect();
        let files: Vec<&str> = names.iter().map(|n| n.rsplit('/').next().unwrap_or("")).collect();
        assert_eq!(files, ["a.png", "b.jpg", "broken.png", "c.PNG", "gray.png", "truncated.png"]);
        assert_eq!((0..6).map(|i| train.label(i)).collect::<Vec<_>>(), [0, 0, 0, 1, 1, 1]);

        let a = train.load(0).expect("png decodes");
        assert_eq!((a.width, a.height, a.data.len()), (20, 16, 20 * 16 * 3));
        assert_eq!(a.pixel(10, 8), [127, 127, 1]);
        let b = train.load(1).expect("jpeg decodes");
        assert_eq!((b.width, b.height), (9, 13));
        let gray = train.load(4).expect("grayscale decodes");
        let [r, g, bl] = gray.pixel(3, 0);
        assert!(r == 60 && g == 60 && bl == 60, "grayscale becomes equal RGB: {:?}", gray.pixel(3, 0));

        for broken in [2, 5] {
            let err = train.load(broken).expect_err("corrupt file fails");
            assert_eq!(err.what, names[broken]);
            assert!(err.to_string().starts_with(&names[broken]), "{err}");
        }
        let val = dataset.val.expect("val split present");
        assert_eq!((val.len(), val.classes().len()), (4, 2));
    }

    #[test]
    fn data_image_folder_accepts_class_folders_at_the_root() {
        let dir = TempDir::new("folder-root");
        save(&dir.path().join("b_class/x.bmp"), &gradient(4, 4, 0).into());
        save(&dir.path().join("a_class/y.png"), &gradient(5, 3, 0).into());
        let dataset = open(dir.path()).expect("class folders at the root");
        assert!(dataset.val.is_none());
        assert_eq!(dataset.classes(), ["a_class", "b_class"]);
        assert_eq!(dataset.train.label(1), 1);
        assert_eq!(dataset.train.load(1).expect("bmp decodes").width, 4);
    }

    #[cfg(unix)]
    #[test]
    fn data_image_folder_follows_a_symlink_loop_once() {
        let dir = TempDir::new("folder-loop");
        save(&dir.path().join("train/cat/a.png"), &gradient(4, 4, 0).into());
        save(&dir.path().join("train/dog/b.png"), &gradient(4, 4, 0).into());
        std::os::unix::fs::symlink(dir.path().join("train"), dir.path().join("train/cat/up")).expect("symlink");
        std::os::unix::fs::symlink(dir.path().join("train/dog"), dir.path().join("train/cat/dog-again"))
            .expect("symlink");
        let dataset = open(dir.path()).expect("a folder with a link to its parent opens");
        // cat/a.png, dog's image once more through `dog-again` (within `cat` the link `up`
        // leads only to folders already seen), then dog/b.png.
        let names: Vec<String> = (0..dataset.train.len()).map(|i| dataset.train.describe(i)).collect();
        let tails: Vec<&str> = names.iter().map(|n| n.rsplit("train/").next().unwrap_or("")).collect();
        assert_eq!(tails, ["cat/a.png", "cat/dog-again/b.png", "dog/b.png"]);
    }

    #[test]
    fn data_image_folder_errors_name_the_folder() {
        let dir = TempDir::new("folder-errors");
        save(&dir.path().join("train/cat/a.png"), &gradient(4, 4, 0).into());
        std::fs::create_dir_all(dir.path().join("train/dog")).expect("mkdir");
        std::fs::write(dir.path().join("train/dog/readme.txt"), b"no images here").expect("write fixture");
        let err = open(dir.path()).err().expect("empty class").to_string();
        let dog = dir.path().join("train/dog");
        assert_eq!(
            err,
            format!("class folder `{}` has no images (png, jpg, ...); add images to it or remove it", dog.display())
        );

        save(&dog.join("d.png"), &gradient(4, 4, 0).into());
        save(&dir.path().join("val/bird/e.png"), &gradient(4, 4, 0).into());
        let err = open(dir.path()).err().expect("val class not in train").to_string();
        assert!(err.contains("class `bird` is in the val folder but not in"), "{err}");

        let bare = TempDir::new("folder-bare");
        std::fs::create_dir_all(bare.path().join("train")).expect("mkdir");
        let err = open(bare.path()).err().expect("train without classes").to_string();
        assert!(err.contains("train` has no class folders"), "{err}");
    }
}
