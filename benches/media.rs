//! Media preprocessing throughput: Qwen3-VL image preprocessing of a 1280x720
//! image at the default pixel budget (images/s), JPEG decoding of a
//! 1600x1200 photo with and without that preprocessing, and video decode + sampling +
//! preprocessing of a sample mp4 (frames/s of source video).
//! Run: `cargo bench --bench media`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use anjeon::media::{self, qwen3vl, Limits, VideoSource};

fn image(c: &mut Criterion) {
    let limits = Limits::default();
    let img = media::load_image(
        std::path::Path::new("tests/fixtures/media/inputs/hd_1280x720.png"),
        &limits,
    )
    .expect("fixture image");
    // A 1600x1200 photo-like JPEG (4:2:0, quality 90), as photos usually
    // come: libjpeg-turbo's decoder (C, no SIMD) as Pillow decodes it.
    let bytes = std::fs::read("tests/fixtures/media/jpeg/photo420_q90_1600x1200.jpg")
        .expect("fixture JPEG");
    let p = qwen3vl::ImageProcessor::qwen3vl_default();
    let mut g = c.benchmark_group("qwen3vl_image");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("preprocess_1280x720", |b| {
        b.iter(|| p.preprocess(&img).unwrap().rows)
    });
    g.bench_function("decode_jpeg_1600x1200", |b| {
        b.iter(|| {
            media::decode_image(&bytes, "photo.jpg", &limits)
                .unwrap()
                .width()
        })
    });
    g.bench_function("decode_jpeg_and_preprocess_1600x1200", |b| {
        b.iter(|| {
            let img = media::decode_image(&bytes, "photo.jpg", &limits).unwrap();
            p.preprocess(&img).unwrap().rows
        })
    });
    g.finish();
}

fn video(c: &mut Criterion) {
    let limits = Limits::default();
    let p = qwen3vl::VideoProcessor::qwen3vl_default();
    let mut g = c.benchmark_group("qwen3vl_video");
    g.sample_size(10);
    for (name, path) in [
        ("AS-0037_320x240_24f", "data/sample/media/AS-0037.mp4"),
        (
            "testsrc_160x90_48f",
            "tests/fixtures/media/inputs/testsrc_24fps.mp4",
        ),
        (
            "gif_96x64_12f",
            "tests/fixtures/media/inputs/anim_10fps.gif",
        ),
    ] {
        let path = std::path::Path::new(path);
        let v = media::decode_video(VideoSource::Path(path), name, &limits).expect("video");
        g.throughput(Throughput::Elements(v.total_frames as u64));
        g.bench_function(format!("decode_sample_preprocess_{name}"), |b| {
            b.iter(|| {
                let v =
                    media::decode_video_sampled(VideoSource::Path(path), name, &limits, &|n, f| {
                        p.sample_indices(n, f)
                    })
                    .unwrap();
                p.preprocess(&v).unwrap().patches.rows
            })
        });
    }
    g.finish();
}

criterion_group!(benches, image, video);
criterion_main!(benches);
