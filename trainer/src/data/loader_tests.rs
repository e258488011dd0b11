//! Tests of `loader`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use autoprog::data::Procedural;

use super::super::testutil::{image_folder_fixture, TempDir};
use super::super::{open, Dataset};
use autoprog::data::augment::eval_transform;
use autoprog::data::augment::AugmentConfig;
use autoprog::data::{epoch_order, LoadError, Pass, PassConfig, RgbImage, Shard};

use super::*;

fn procedural(count: usize) -> Arc<dyn Source> {
    Dataset::procedural(Procedural { classes: 5, image_size: 12, seed: 1 }, count, 0).train
}

fn collect(source: &Arc<dyn Source>, order: Vec<usize>, config: PassConfig, workers: usize) -> Vec<Batch> {
    let loader = Loader::new(source.clone(), order, config, workers).expect("valid loader");
    loader.map(|b| b.expect("batch builds")).collect()
}

#[test]
fn data_loader_epoch_order_is_a_seeded_permutation() {
    let order = epoch_order(50, 7, 0);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_eq!(order, epoch_order(50, 7, 0));
    assert_ne!(order, epoch_order(50, 7, 1));
    assert_ne!(order, epoch_order(50, 8, 0));
    assert!(epoch_order(0, 1, 1).is_empty());
}

#[test]
fn data_loader_batches_are_identical_for_any_number_of_workers() {
    let source = procedural(30);
    let aug = AugmentConfig { resolution: 8, mix_prob: 1.0, erase_prob: 0.5, ..AugmentConfig::default() };
    let config = PassConfig { batch: 4, aug: aug.clone(), train: true, seed: 3, epoch: 2, ..PassConfig::default() };
    let order = epoch_order(30, 3, 2);
    let one = collect(&source, order.clone(), config.clone(), 1);
    assert_eq!(one.len(), 8);
    assert_eq!(one.iter().map(|b| b.index).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    assert_eq!(one[7].len(), 2, "the last batch keeps the 2 remaining samples");
    for batch in &one {
        assert_eq!(batch.images.len(), batch.len() * 3 * 8 * 8);
        let targets = batch.targets.as_ref().expect("training batches carry soft targets");
        assert_eq!(targets.len(), batch.len() * 5);
    }
    assert_eq!(one[0].labels, order[..4].iter().map(|&i| source.label(i)).collect::<Vec<_>>());
    assert_eq!(one, collect(&source, order.clone(), config.clone(), 3));
    assert_eq!(one, collect(&source, order.clone(), config.clone(), 0));
    let other_epoch = PassConfig { epoch: 3, ..config };
    assert_ne!(one, collect(&source, order, other_epoch, 3));
}

#[test]
fn data_parallel_shards_of_every_batch_make_up_the_whole_batch() {
    let source = procedural(24);
    let order = epoch_order(24, 3, 2);
    let mixed = AugmentConfig { resolution: 8, mix_prob: 1.0, erase_prob: 0.5, ..AugmentConfig::default() };
    let plain = AugmentConfig { mix_prob: 0.0, smoothing: 0.0, mixup_alpha: 0.0, cutmix_alpha: 0.0, ..mixed.clone() };
    for aug in [mixed, plain] {
        let config = PassConfig { batch: 8, drop_last: true, aug, train: true, seed: 3, ..PassConfig::default() };
        let whole = collect(&source, order.clone(), config.clone(), 2);
        for ranks in [2, 4] {
            let shards: Vec<Vec<Batch>> = (0..ranks)
                .map(|rank| {
                    let shard = Shard { rank, ranks };
                    collect(&source, order.clone(), PassConfig { shard, ..config.clone() }, 2)
                })
                .collect();
            for (i, batch) in whole.iter().enumerate() {
                let parts: Vec<&Batch> = shards.iter().map(|s| &s[i]).collect();
                assert!(parts.iter().all(|p| p.len() == 8 / ranks), "equal shards");
                let joined = |part: fn(&Batch) -> Vec<f32>| parts.iter().flat_map(|p| part(p)).collect::<Vec<f32>>();
                assert_eq!(joined(|b| b.images.clone()), batch.images, "batch {i}, {ranks} ranks");
                assert_eq!(
                    joined(|b| b.labels.iter().map(|&l| l as f32).collect()),
                    batch.labels.iter().map(|&l| l as f32).collect::<Vec<_>>()
                );
                assert_eq!(
                    joined(|b| b.targets.clone().unwrap_or_default()),
                    batch.targets.clone().unwrap_or_default()
                );
            }
        }
    }
    // A batch that does not split evenly is refused with the fix.
    let config = PassConfig { batch: 6, drop_last: true, shard: Shard { rank: 0, ranks: 4 }, ..PassConfig::default() };
    let error = Pass::new(source, order, config).err().expect("6 does not split over 4 ranks").to_string();
    assert!(error.contains("multiple of 4"), "{error}");
}

#[test]
fn data_loader_eval_batches_follow_the_order() {
    let source = procedural(10);
    let aug = AugmentConfig::none(12);
    let order = vec![9, 0, 4, 4, 7];
    let config = PassConfig { batch: 2, drop_last: true, aug: aug.clone(), ..PassConfig::default() };
    let batches = collect(&source, order.clone(), config, 2);
    assert_eq!(batches.len(), 2);
    for (b, batch) in batches.iter().enumerate() {
        assert!(batch.targets.is_none());
        for (k, &sample) in order[2 * b..2 * b + 2].iter().enumerate() {
            assert_eq!(batch.labels[k], source.label(sample));
            let expected = eval_transform(&source.load(sample).expect("loads"), &aug);
            assert_eq!(batch.images[k * 3 * 144..(k + 1) * 3 * 144], expected[..]);
        }
    }
}

#[test]
fn data_loader_skips_corrupt_files_once_with_a_warning() {
    let dir = TempDir::new("loader-skip");
    let root = image_folder_fixture(&dir);
    let train = open(&root).expect("valid image folder").train;
    let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = warnings.clone();
    let skipped = Skipped::with_warning(move |m| sink.lock().expect("not poisoned").push(m.to_string()));
    for epoch in 0..2 {
        let config = PassConfig {
            batch: 3,
            aug: AugmentConfig::none(6),
            epoch,
            skipped: skipped.clone(),
            ..PassConfig::default()
        };
        let loader = Loader::new(train.clone(), (0..train.len()).collect(), config, 2).expect("valid loader");
        let batches: Vec<Batch> = loader.map(|b| b.expect("batches go on without broken files")).collect();
        // broken.png (position 2) and truncated.png (position 5) are left out, and no other
        // image takes their place: each good image appears once.
        assert_eq!(batches[0].labels, [0, 0]);
        assert_eq!(batches[1].labels, [1, 1]);
        assert_eq!((batches[0].images.len(), batches[1].images.len()), (2 * 108, 2 * 108));
        assert_ne!(batches[0].images[108..], batches[1].images[..108]);
        // The run log hears of each failure once, in the first epoch.
        let new: Vec<String> = skipped.take_new().into_iter().map(|e| e.what).collect();
        assert_eq!(new.len(), if epoch == 0 { 2 } else { 0 }, "{new:?}");
    }
    let warnings = warnings.lock().expect("not poisoned");
    assert_eq!(warnings.len(), 2, "one warning per broken file: {warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("cat/broken.png`")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("dog/truncated.png`")), "{warnings:?}");
    assert_eq!(skipped.count(), 2);
    assert!(skipped.files()[0].ends_with("broken.png"));
}

/// A source whose images fail to load from `failing_from` on, and that counts loads.
struct Flaky {
    classes: Vec<String>,
    failing_from: usize,
    delay: Duration,
    loads: AtomicUsize,
}

impl Flaky {
    fn new(failing_from: usize, delay: Duration) -> Self {
        Flaky { classes: vec!["a".into(), "b".into()], failing_from, delay, loads: AtomicUsize::new(0) }
    }
}

impl Source for Flaky {
    fn len(&self) -> usize {
        100
    }
    fn label(&self, index: usize) -> u32 {
        (index % 2) as u32
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn load(&self, index: usize) -> Result<RgbImage, LoadError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if index >= self.failing_from {
            return Err(LoadError { what: self.describe(index), reason: "corrupt".into() });
        }
        Ok(RgbImage::filled(4, 4, [index as u8; 3]))
    }
    fn describe(&self, index: usize) -> String {
        format!("flaky#{index}")
    }
}

#[test]
fn data_loader_reports_a_batch_it_cannot_fill() {
    let source: Arc<dyn Source> = Arc::new(Flaky::new(40, Duration::ZERO));
    for workers in [0, 2] {
        let skipped = Skipped::with_warning(|_| {});
        let config =
            PassConfig { batch: 8, aug: AugmentConfig::none(4), skipped: skipped.clone(), ..PassConfig::default() };
        let mut loader = Loader::new(source.clone(), (0..100).collect(), config, workers).expect("valid loader");
        assert_eq!(loader.batches(), 13);
        let results: Vec<_> = loader.by_ref().collect();
        assert_eq!(results.len(), 6, "5 good batches, then the error, then the end");
        assert!(results[..5].iter().all(Result::is_ok));
        let err = results[5].as_ref().expect_err("batch 5 cannot be filled").to_string();
        assert!(err.starts_with("batch 5 could not be filled: none of its 8 images loads"), "{err}");
        assert!(err.contains("(the last was `flaky#47`)"), "{err}");
        assert!(loader.next().is_none());
        // Positions 40..=47 failed; workers running ahead may have met more broken ones.
        if workers == 0 {
            assert_eq!(skipped.count(), 8);
        } else {
            assert!(skipped.count() >= 8);
        }
    }
}

#[test]
fn data_loader_stops_cleanly_when_dropped() {
    let flaky = Arc::new(Flaky::new(usize::MAX, Duration::from_millis(15)));
    let source: Arc<dyn Source> = flaky.clone();
    let config = PassConfig { batch: 2, aug: AugmentConfig::none(4), ..PassConfig::default() };
    // Three workers, at most 2 batches ahead of the consumer.
    let mut loader = Loader::start(Pass::new(source, (0..100).collect(), config).expect("valid pass"), 3, 2);
    assert!(loader.next().expect("a first batch").is_ok());
    let started = Instant::now();
    drop(loader);
    assert!(started.elapsed() < Duration::from_secs(2), "drop took {:?}", started.elapsed());
    // One batch consumed and at most 2 ahead of it were ever started: 3 batches of 2.
    let loads = flaky.loads.load(Ordering::SeqCst);
    assert!((2..=6).contains(&loads), "{loads} samples loaded");
}

#[test]
fn data_loader_rejects_bad_settings() {
    let source = procedural(10);
    let make = |order: Vec<usize>, config: PassConfig| {
        Loader::new(source.clone(), order, config, 2).err().map(|e| e.to_string())
    };
    let none = PassConfig { batch: 64, aug: AugmentConfig::none(8), ..PassConfig::default() };
    let err = make((0..10).collect(), PassConfig { batch: 0, ..none.clone() }).expect("rejected");
    assert!(err.contains("--batch must be at least 1"), "{err}");
    let err = make((0..10).collect(), PassConfig { batch: 16, drop_last: true, ..none.clone() }).expect("rejected");
    assert!(err.contains("batch 16 is larger than the 10 samples"), "{err}");
    let err = make(vec![], none.clone()).expect("rejected");
    assert!(err.contains("no samples"), "{err}");
    let err = make(vec![3, 10], none.clone()).expect("rejected");
    assert!(err.contains("sample 10 of the epoch order is past the 10 samples"), "{err}");
    let bad_aug = PassConfig { aug: AugmentConfig { resolution: 0, ..AugmentConfig::none(8) }, ..none };
    assert!(make(vec![0], bad_aug).expect("rejected").contains("resolution must be at least 1"));
}

#[test]
fn data_loader_starting_inside_an_epoch_builds_no_earlier_batch() {
    let config = PassConfig { batch: 4, aug: AugmentConfig::none(4), ..PassConfig::default() };
    let whole: Vec<Batch> = {
        let source: Arc<dyn Source> = Arc::new(Flaky::new(usize::MAX, Duration::ZERO));
        collect(&source, (0..100).collect(), config.clone(), 0)
    };
    for workers in [0, 2] {
        let flaky = Arc::new(Flaky::new(usize::MAX, Duration::ZERO));
        let source: Arc<dyn Source> = flaky.clone();
        let pass = Pass::new(source, (0..100).collect(), config.clone()).expect("valid pass");
        let rest: Vec<Batch> = Loader::starting_at(pass, 20, workers, 2).map(|b| b.expect("batch builds")).collect();
        assert_eq!(rest.len(), 5, "{workers} workers");
        for (got, expected) in rest.iter().zip(&whole[20..]) {
            assert_eq!((&got.images, &got.labels), (&expected.images, &expected.labels), "{workers} workers");
        }
        // The 80 samples of batches 0..20 were never loaded: only the last 5 batches' 20.
        assert_eq!(flaky.loads.load(Ordering::SeqCst), 20, "{workers} workers");
    }
    let flaky: Arc<dyn Source> = Arc::new(Flaky::new(usize::MAX, Duration::ZERO));
    let pass = Pass::new(flaky, (0..100).collect(), config).expect("valid pass");
    assert!(Loader::starting_at(pass, 30, 2, 2).next().is_none(), "a start past the end yields nothing");
}
