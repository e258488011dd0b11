//! Images the user picks in the page (a folder picker), read as `autoprog train --data DIR`
//! reads an image folder: `ROOT/train/<class>/…` with an optional `ROOT/val/<class>/…`
//! (or `valid`, `validation`), or class folders directly under `ROOT`; classes in sorted
//! order, images in sorted path order, hidden entries and other files left out. The page
//! decodes the files this plan asks for and hands the pixels back.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use autoprog::data::{split_train_val, LoadError, RgbImage, Source};
use autoprog::train::fit::{fit_epochs, fit_flips};
use autoprog::train::TrainConfig;
use wasm_bindgen::prelude::*;

use crate::js_error;

/// Extensions of the image formats a browser decodes (lower case).
const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "jpe", "gif", "bmp", "webp", "ico"];

/// Names accepted for the validation folder, in order of preference (as natively).
const VAL_FOLDERS: [&str; 3] = ["val", "valid", "validation"];

/// Where each picked file goes: the classes, and per split the (file index, label) pairs
/// in the order a native run lists them.
#[derive(Debug, PartialEq)]
pub struct FolderPlan {
    /// The picked folder's name.
    pub root: String,
    pub classes: Vec<String>,
    pub train: Vec<(usize, u32)>,
    /// `None`: no val folder (a tenth of the training images is then held out, seeded).
    pub val: Option<Vec<(usize, u32)>>,
}

/// Plans the dataset of the picked files, given their paths relative to the folder's
/// parent (`ROOT/train/cat/1.png`, as a browser's folder picker reports them).
pub fn plan(paths: &[String]) -> Result<FolderPlan, String> {
    let mut files: Vec<(Vec<&str>, usize)> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.split('/').filter(|c| !c.is_empty()).collect::<Vec<_>>(), i))
        .filter(|(parts, _)| parts.iter().all(|c| !c.starts_with('.')) && is_image(parts.last().copied()))
        .collect();
    // Component-wise, as the native listing sorts each folder's entries by name.
    files.sort();
    let root = files
        .first()
        .map(|(parts, _)| parts[0].to_string())
        .ok_or_else(|| "the picked folder holds no images (PNG, JPEG, GIF, BMP, WebP) in class folders".to_string())?;
    let split_layout = files.iter().any(|(parts, _)| parts.len() >= 4 && parts[1] == "train");
    let (train, val) = if split_layout {
        let val_name = VAL_FOLDERS.iter().find(|v| files.iter().any(|(p, _)| p.len() >= 4 && p[1] == **v));
        let train = in_folder(&files, Some("train"));
        let val = val_name.map(|v| in_folder(&files, Some(v)));
        (train, val)
    } else {
        (in_folder(&files, None), None)
    };
    let classes: Vec<String> =
        train.iter().map(|(class, _)| class.to_string()).collect::<BTreeSet<_>>().into_iter().collect();
    if classes.len() < 2 {
        return Err(format!(
            "{root} has {} class folder(s) with images; a classifier needs at least 2 (ROOT/<class>/*.png or \
             ROOT/train/<class>/*.png)",
            classes.len()
        ));
    }
    if let Some(stray) = val.iter().flatten().map(|(class, _)| *class).find(|c| !classes.iter().any(|k| k == c)) {
        return Err(format!("class `{stray}` is in {root}'s val folder but not in its train folder"));
    }
    let label = |class: &str| classes.iter().position(|c| c == class).expect("a listed class") as u32;
    let labelled = |files: Vec<(&str, usize)>| files.into_iter().map(|(c, i)| (i, label(c))).collect::<Vec<_>>();
    Ok(FolderPlan { root, train: labelled(train), val: val.map(labelled), classes })
}

fn is_image(name: Option<&str>) -> bool {
    let extension = name.and_then(|n| n.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase());
    extension.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// The (class, file index) pairs under `ROOT/split/<class>/…` (`ROOT/<class>/…` without a
/// split), in listing order.
fn in_folder<'a>(files: &[(Vec<&'a str>, usize)], split: Option<&str>) -> Vec<(&'a str, usize)> {
    let depth = if split.is_some() { 2 } else { 1 };
    files
        .iter()
        .filter(|(parts, _)| parts.len() > depth + 1 && split.is_none_or(|s| parts[1] == s))
        .map(|(parts, i)| (parts[depth], *i))
        .collect()
}

/// A decoded image, or why the browser could not decode it.
pub type Decoded = Arc<Result<RgbImage, String>>;

/// Decoded images of one split, in plan order.
pub struct PickedSource {
    classes: Vec<String>,
    samples: Vec<(String, u32, Decoded)>,
}

impl PickedSource {
    /// `samples`: (path, label, the decoded image or why it could not be decoded).
    pub fn new(classes: Vec<String>, samples: Vec<(String, u32, Decoded)>) -> Self {
        PickedSource { classes, samples }
    }
}

impl Source for PickedSource {
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
        let (path, _, image) = &self.samples[index];
        match &**image {
            Ok(image) => Ok(image.clone()),
            Err(reason) => Err(LoadError { what: path.clone(), reason: reason.clone() }),
        }
    }

    fn describe(&self, index: usize) -> String {
        self.samples[index].0.clone()
    }
}

struct Picked {
    plan: FolderPlan,
    paths: Vec<String>,
    images: Vec<Option<Decoded>>,
}

/// The images of a picked folder: planned from the file paths, then filled with the pixels
/// the page decodes.
#[wasm_bindgen]
pub struct PickedImages {
    inner: Rc<std::cell::RefCell<Picked>>,
}

#[wasm_bindgen]
impl PickedImages {
    /// Plans the dataset of the files at `paths` (relative to the folder's parent, as the
    /// folder picker's `webkitRelativePath`), or says why the folder is not one.
    #[wasm_bindgen(constructor)]
    pub fn new(paths: Vec<String>) -> Result<PickedImages, JsValue> {
        let plan = plan(&paths).map_err(js_error)?;
        let images = vec![None; paths.len()];
        Ok(PickedImages { inner: Rc::new(std::cell::RefCell::new(Picked { plan, paths, images })) })
    }

    /// Another handle on the same images (a run takes one).
    pub fn share(&self) -> PickedImages {
        PickedImages { inner: self.inner.clone() }
    }

    /// Indices (into the paths) of the files to decode, in the order they are used.
    pub fn wanted(&self) -> Vec<u32> {
        let p = &self.inner.borrow().plan;
        p.train.iter().chain(p.val.iter().flatten()).map(|&(i, _)| i as u32).collect()
    }

    /// The pixels of file `index` (RGBA, alpha ignored).
    pub fn add(&self, index: u32, rgba: Vec<u8>, width: u32, height: u32) -> Result<(), JsValue> {
        let image = RgbImage::from_rgba(width as usize, height as usize, &rgba).map_err(|e| e.to_string());
        self.set(index, image)
    }

    /// File `index` could not be decoded: training leaves it out and reports it.
    pub fn failed(&self, index: u32, reason: String) -> Result<(), JsValue> {
        self.set(index, Err(reason))
    }

    fn set(&self, index: u32, image: Result<RgbImage, String>) -> Result<(), JsValue> {
        let mut picked = self.inner.borrow_mut();
        let slot = picked.images.get_mut(index as usize).ok_or_else(|| js_error("no such picked file"))?;
        *slot = Some(Arc::new(image));
        Ok(())
    }

    /// The folder's name.
    pub fn root(&self) -> String {
        self.inner.borrow().plan.root.clone()
    }

    /// The class names, in label order.
    pub fn classes(&self) -> Vec<String> {
        self.inner.borrow().plan.classes.clone()
    }

    /// Whether the folder has its own val split.
    pub fn has_val(&self) -> bool {
        self.inner.borrow().plan.val.is_some()
    }

    /// Fits a new run's `config` (TOML) to the decoded images as `autoprog train --data` fits
    /// a new run to a folder: flips as the probe of the training images advises, and with
    /// `spread_epochs` (the form's epochs left empty) the preset's steps spread over them.
    /// Returns `{"config": TOML, "notes": [the lines that say what was chosen and why]}`.
    pub fn fit(&self, config: &str, spread_epochs: bool) -> Result<String, JsValue> {
        self.fitted(config, spread_epochs).map_err(js_error)
    }

    /// `digits (picked folder): 900 train, 100 val images, 10 classes`.
    pub fn describe(&self) -> String {
        let p = &self.inner.borrow().plan;
        let val = p.val.as_ref().map_or("a tenth held out for val".to_string(), |v| format!("{} val images", v.len()));
        format!("{} (picked folder): {} train, {val}, {} classes", p.root, p.train.len(), p.classes.len())
    }
}

impl PickedImages {
    /// [`PickedImages::fit`], with errors that need no JavaScript.
    fn fitted(&self, config: &str, spread_epochs: bool) -> anyhow::Result<String> {
        let mut config = TrainConfig::from_toml(config)?;
        let (train, _) = self.sources(&config)?;
        // The page has no flip control: the probe decides, as natively without a flag.
        let mut notes: Vec<String> = fit_flips(&mut config, train.as_ref()).map(|(_, line)| line).into_iter().collect();
        if spread_epochs {
            notes.push(format!("{}; the Epochs field overrides)", fit_epochs(&mut config, train.len(), None)?));
        }
        config.validate()?;
        Ok(serde_json::json!({ "config": config.to_toml(), "notes": notes }).to_string())
    }

    /// The (train, val) sources of a run of `config`: the folder's val split, or a seeded
    /// fraction of the training images held out as natively (`--val-split`).
    pub fn sources(&self, config: &TrainConfig) -> anyhow::Result<(Arc<dyn Source>, Arc<dyn Source>)> {
        let picked = self.inner.borrow();
        let part = |samples: &[(usize, u32)]| -> anyhow::Result<Arc<dyn Source>> {
            let mut out = Vec::with_capacity(samples.len());
            for &(i, label) in samples {
                let image = picked.images[i].clone();
                let image = image.ok_or_else(|| anyhow::anyhow!("{} was not decoded yet", picked.paths[i]))?;
                out.push((picked.paths[i].clone(), label, image));
            }
            Ok(Arc::new(PickedSource::new(picked.plan.classes.clone(), out)))
        };
        let train = part(&picked.plan.train)?;
        Ok(match (&picked.plan.val, config.data.val_split) {
            (Some(val), None) => (train, part(val)?),
            (_, fraction) => {
                let (train, val) = split_train_val(train, fraction.unwrap_or(0.1), config.recipe.seed)?;
                (Arc::new(train), Arc::new(val))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn class_folders_under_the_root_give_a_train_split() {
        let picked =
            paths(&["digits/b/2.png", "digits/a/1.PNG", "digits/a/notes.txt", "digits/.DS_Store", "digits/b/.x/3.png"]);
        let plan = plan(&picked).unwrap();
        assert_eq!(plan.root, "digits");
        assert_eq!(plan.classes, ["a", "b"]);
        assert_eq!(plan.train, [(1, 0), (0, 1)]);
        assert_eq!(plan.val, None);
    }

    #[test]
    fn train_and_val_folders_keep_their_split_and_sorted_order() {
        let picked = paths(&[
            "set/val/cat/9.jpg",
            "set/train/dog/b/2.png",
            "set/train/dog/a.png",
            "set/train/cat/1.png",
            "set/train/dog/c.png",
            "set/README.md",
        ]);
        let plan = plan(&picked).unwrap();
        assert_eq!(plan.classes, ["cat", "dog"]);
        // dog: a.png, then the folder b (its 2.png), then c.png, as the native listing.
        assert_eq!(plan.train, [(3, 0), (2, 1), (1, 1), (4, 1)]);
        assert_eq!(plan.val, Some(vec![(0, 0)]));
    }

    #[test]
    fn unusable_picks_say_what_is_wrong() {
        assert!(plan(&paths(&["x/readme.txt"])).unwrap_err().contains("holds no images"));
        assert!(plan(&paths(&["x/only/1.png"])).unwrap_err().contains("1 class folder"));
        let stray = plan(&paths(&["x/train/a/1.png", "x/train/b/1.png", "x/val/c/1.png"])).unwrap_err();
        assert!(stray.contains("class `c`"), "{stray}");
    }

    #[test]
    fn a_picked_folder_is_fitted_as_a_native_folder() {
        // Two classes told apart by their bright half, left or right: a mirror image is
        // the other class, as with digits, so the probe turns flips off.
        let files: Vec<String> = (0..40).map(|i| format!("sides/{}/{i:02}.png", ["left", "right"][i % 2])).collect();
        let picked = PickedImages::new(files.clone()).unwrap();
        for (i, _) in files.iter().enumerate() {
            let rgba: Vec<u8> = (0..16 * 16)
                .flat_map(|p| {
                    let bright = (p % 16 < 8) == (i % 2 == 0);
                    let v = if bright { 230 } else { 20 } + (i * 7 % 13) as u8;
                    [v, v, v, 255]
                })
                .collect();
            picked.add(i as u32, rgba, 16, 16).unwrap();
        }
        let mut quick = TrainConfig::preset("quick").unwrap();
        quick.data.path = Some("sides".into());
        quick.data.val_split = Some(0.1);
        let fitted: serde_json::Value = serde_json::from_str(&picked.fitted(&quick.to_toml(), true).unwrap()).unwrap();
        let config = TrainConfig::from_toml(fitted["config"].as_str().unwrap()).unwrap();
        let notes: Vec<&str> = fitted["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        assert!(!config.augment.hflip && notes[0].starts_with("flips: off: "), "{notes:?}");
        // 36 training images (a tenth held out) at the capped 20 times the preset's epochs.
        assert_eq!((config.recipe.epochs, config.recipe.validate_every), (80, 20));
        assert!(
            notes[1].starts_with("epochs: 80 (") && notes[1].ends_with("; the Epochs field overrides)"),
            "{notes:?}"
        );
        // Epochs chosen in the form stay.
        let kept: serde_json::Value = serde_json::from_str(&picked.fitted(&quick.to_toml(), false).unwrap()).unwrap();
        assert_eq!(TrainConfig::from_toml(kept["config"].as_str().unwrap()).unwrap().recipe.epochs, 4);
    }
}
