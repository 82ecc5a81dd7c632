/*
 * anjeon's whole use of FFmpeg, behind a dozen plain C functions.
 *
 * Rust calls these through `extern "C"` declarations in src/media/video.rs,
 * so no FFmpeg struct layout crosses the language boundary and no bindings
 * are generated at build time (no bindgen, no libclang). The same file
 * compiles against the FFmpeg that build.rs builds from source (the default)
 * and against a system FFmpeg >= 5.1 (feature `system-ffmpeg`).
 *
 * Demux the best video stream, decode every frame in order, and convert the
 * frames the caller asks for to packed RGB24 with swscale's bicubic flags,
 * as `ffmpeg -i IN -pix_fmt rgb24` does.
 */
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/display.h>
#include <libavutil/error.h>
#include <libavutil/log.h>
#include <libavutil/pixfmt.h>
#include <stddef.h>
#include <libswscale/swscale.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Keep in step with `ShimInfo` in src/media/video.rs. */
typedef struct AnjeonVideoInfo {
    int32_t width;
    int32_t height;
    int64_t header_frames;  /* the container's frame count, 0 when unknown */
    double avg_fps;         /* 0 when unknown */
    double r_fps;           /* 0 when unknown */
    double duration_secs;   /* the stream's, else the container's; 0 when unknown */
    int32_t has_matrix;     /* 1 when the stream carries a display matrix */
    int32_t matrix[9];
    double rotation;        /* av_display_rotation_get(matrix); 0 without one */
    char codec[32];         /* the codec's short name, e.g. "h264" */
    int32_t external;       /* 1: AV1 without an FFmpeg decoder; the caller decodes
                               the packets (`anjeon_video_packet`) */
} AnjeonVideoInfo;

typedef struct AnjeonVideo {
    AVFormatContext *fmt;
    AVCodecContext *dec;
    int stream;
    AVPacket *pkt;
    AVFrame *frame;
    AVFrame *rgb;
    struct SwsContext *sws;
    int sws_fmt, sws_w, sws_h;
    int64_t packet_errors;
    int flushed;
} AnjeonVideo;

enum {
    ANJEON_OK = 0,
    ANJEON_OPEN = 1,       /* not a readable media file */
    ANJEON_NO_VIDEO = 2,   /* no video stream */
    ANJEON_NO_DECODER = 3, /* this build has no decoder for the codec */
    ANJEON_DECODER = 4,    /* the decoder refused the stream */
    ANJEON_NOMEM = 5,
};

static void set_err(char *err, size_t len, const char *what, int code) {
    char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
    if (code < 0)
        av_strerror(code, buf, sizeof buf);
    snprintf(err, len, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

static double q2d_or_zero(AVRational r) {
    return (r.den != 0 && r.num > 0) ? (double)r.num / (double)r.den : 0.0;
}

static const int32_t *display_matrix(const AVStream *st) {
#if LIBAVCODEC_VERSION_INT >= AV_VERSION_INT(60, 29, 100)
    const AVPacketSideData *sd = av_packet_side_data_get(
        st->codecpar->coded_side_data, st->codecpar->nb_coded_side_data,
        AV_PKT_DATA_DISPLAYMATRIX);
    return (sd && sd->size >= 9 * 4) ? (const int32_t *)sd->data : NULL;
#else
    size_t size = 0;
    const uint8_t *d = av_stream_get_side_data(st, AV_PKT_DATA_DISPLAYMATRIX, &size);
    return (d && size >= 9 * 4) ? (const int32_t *)d : NULL;
#endif
}

void anjeon_video_close(AnjeonVideo *v) {
    if (!v)
        return;
    sws_freeContext(v->sws);
    av_frame_free(&v->rgb);
    av_frame_free(&v->frame);
    av_packet_free(&v->pkt);
    avcodec_free_context(&v->dec);
    avformat_close_input(&v->fmt);
    av_free(v);
}

int anjeon_video_open(const char *path, AnjeonVideo **out, AnjeonVideoInfo *info,
                      char *err, size_t errlen) {
    *out = NULL;
    memset(info, 0, sizeof *info);
    av_log_set_level(AV_LOG_QUIET);
    AnjeonVideo *v = av_mallocz(sizeof *v);
    if (!v)
        return ANJEON_NOMEM;
    v->sws_fmt = -1;
    int r = avformat_open_input(&v->fmt, path, NULL, NULL);
    if (r < 0) {
        set_err(err, errlen, "cannot open as a video container", r);
        anjeon_video_close(v);
        return ANJEON_OPEN;
    }
    r = avformat_find_stream_info(v->fmt, NULL);
    if (r < 0) {
        set_err(err, errlen, "cannot read the stream headers", r);
        anjeon_video_close(v);
        return ANJEON_OPEN;
    }
    r = av_find_best_stream(v->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, NULL, 0);
    if (r < 0) {
        set_err(err, errlen, "no video stream", 0);
        anjeon_video_close(v);
        return ANJEON_NO_VIDEO;
    }
    v->stream = r;
    AVStream *st = v->fmt->streams[r];
    snprintf(info->codec, sizeof info->codec, "%s", avcodec_get_name(st->codecpar->codec_id));
    info->avg_fps = q2d_or_zero(st->avg_frame_rate);
    info->r_fps = q2d_or_zero(st->r_frame_rate);
    info->header_frames = st->nb_frames > 0 ? st->nb_frames : 0;
    if (st->duration > 0 && st->time_base.den != 0)
        info->duration_secs = (double)st->duration * st->time_base.num / st->time_base.den;
    else if (v->fmt->duration > 0)
        info->duration_secs = (double)v->fmt->duration / AV_TIME_BASE;
    const int32_t *m = display_matrix(st);
    if (m) {
        info->has_matrix = 1;
        memcpy(info->matrix, m, sizeof info->matrix);
        double rot = av_display_rotation_get(m);
        info->rotation = rot == rot ? rot : 0.0; /* NaN for a degenerate matrix */
    }
    const AVCodec *codec = avcodec_find_decoder(st->codecpar->codec_id);
#ifdef ANJEON_AV1_EXTERNAL
    if (!codec && st->codecpar->codec_id == AV_CODEC_ID_AV1) {
        /* Demux here, decode in Rust (rav1d). */
        v->pkt = av_packet_alloc();
        v->frame = av_frame_alloc();
        v->rgb = av_frame_alloc();
        if (!v->pkt || !v->frame || !v->rgb) {
            anjeon_video_close(v);
            return ANJEON_NOMEM;
        }
        info->external = 1;
        info->width = st->codecpar->width;
        info->height = st->codecpar->height;
        *out = v;
        return ANJEON_OK;
    }
#endif
    if (!codec) {
        snprintf(err, errlen, "no decoder for codec %s in this build", info->codec);
        anjeon_video_close(v);
        return ANJEON_NO_DECODER;
    }
    v->dec = avcodec_alloc_context3(codec);
    v->pkt = av_packet_alloc();
    v->frame = av_frame_alloc();
    v->rgb = av_frame_alloc();
    if (!v->dec || !v->pkt || !v->frame || !v->rgb) {
        anjeon_video_close(v);
        return ANJEON_NOMEM;
    }
    r = avcodec_parameters_to_context(v->dec, st->codecpar);
    if (r >= 0) {
        /* Frame threads would change nothing in the output but hold more
         * frames in memory; one thread keeps memory and order simple. */
        v->dec->thread_count = 1;
        v->dec->pkt_timebase = st->time_base;
        r = avcodec_open2(v->dec, codec, NULL);
    }
    if (r < 0) {
        set_err(err, errlen, "the decoder refused the stream", r);
        anjeon_video_close(v);
        return ANJEON_DECODER;
    }
    info->width = v->dec->width;
    info->height = v->dec->height;
    *out = v;
    return ANJEON_OK;
}

/* Decode the next frame. 1: a frame is ready (its size in *w, *h);
 * 0: end of stream. Packets the decoder rejects are counted and skipped. */
int anjeon_video_next(AnjeonVideo *v, int32_t *w, int32_t *h) {
    int read_errors = 0, drain_errors = 0;
    for (;;) {
        int r = avcodec_receive_frame(v->dec, v->frame);
        if (r >= 0) {
            *w = v->frame->width;
            *h = v->frame->height;
            return 1;
        }
        if (r == AVERROR_EOF)
            return 0;
        if (r != AVERROR(EAGAIN)) {
            /* A broken frame: count it and go on (while draining, until the
             * decoder says EOF or keeps failing). */
            v->packet_errors++;
            if (v->flushed) {
                if (++drain_errors > 64)
                    return 0;
                continue;
            }
        } else if (v->flushed) {
            return 0;
        }
        r = av_read_frame(v->fmt, v->pkt);
        if (r < 0) {
            /* End of file, or a read error that resynchronising will not
             * fix after many tries: drain the decoder. */
            if (r != AVERROR_EOF && ++read_errors < 64)
                continue;
            avcodec_send_packet(v->dec, NULL);
            v->flushed = 1;
            continue;
        }
        read_errors = 0;
        if (v->pkt->stream_index == v->stream) {
            if (avcodec_send_packet(v->dec, v->pkt) < 0)
                v->packet_errors++;
        }
        av_packet_unref(v->pkt);
    }
}


/* ---- YUV -> RGB24 as FFmpeg computes it on x86 -------------------------
 *
 * For planar 8-bit 4:2:0 / 4:2:2 frames of even height, swscale's unscaled
 * converter on any x86-64 CPU (SSSE3, libswscale/x86/yuv_2_rgb.asm) is what
 * `ffmpeg -pix_fmt rgb24`, PyAV and so transformers' video loaders produce.
 * Its rounding differs from swscale's portable C code by a level here and
 * there. This is that SSSE3 arithmetic written out in portable C, so the
 * frames are the same bits on every CPU, and the same bits as the reference.
 * Coefficients as libswscale/yuv2rgb.c's ff_yuv2rgb_c_init_tables derives
 * them (contrast and saturation 1.0, brightness 0). */
static int16_t round_to_int16(int64_t f) {
    int r = (int)((f + (1 << 15)) >> 16);
    if (r < -0x7FFF)
        return (int16_t)-0x8000;
    if (r > 0x7FFF)
        return 0x7FFF;
    return (int16_t)r;
}
static inline int16_t sat16(int v) {
    return (int16_t)(v < -32768 ? -32768 : v > 32767 ? 32767 : v);
}
static inline int16_t mulhi(int16_t a, int16_t b) {
    return (int16_t)(((int32_t)a * (int32_t)b) >> 16);
}
static inline uint8_t clip_u8(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

static int is_full_range(const AVFrame *f) {
    return f->color_range == AVCOL_RANGE_JPEG || f->format == AV_PIX_FMT_YUVJ420P ||
           f->format == AV_PIX_FMT_YUVJ422P || f->format == AV_PIX_FMT_YUVJ444P;
}

/* swscale's choice of this converter (swscale_unscaled.c: 8-bit 4:2:0 or
 * 4:2:2 to RGB, no accurate rounding, even height). */
static int takes_x86_path(const AVFrame *f) {
    int fmt = f->format;
    return (fmt == AV_PIX_FMT_YUV420P || fmt == AV_PIX_FMT_YUVJ420P || fmt == AV_PIX_FMT_YUVA420P ||
            fmt == AV_PIX_FMT_YUV422P || fmt == AV_PIX_FMT_YUVJ422P) &&
           !(f->height & 1);
}

static void yuv_to_rgb24_x86_exact(const AVFrame *f, const int table[4], int full, uint8_t *dst) {
    int64_t crv = table[0], cbu = table[1], cgu = -table[2], cgv = -table[3];
    int64_t cy = 1 << 16, oy = 0;
    const int64_t contrast = 1 << 16, saturation = 1 << 16;
    if (!full) {
        cy = (cy * 255) / 219;
        oy = 16 << 16;
    } else {
        crv = (crv * 224) / 255;
        cbu = (cbu * 224) / 255;
        cgu = (cgu * 224) / 255;
        cgv = (cgv * 224) / 255;
    }
    cy = (cy * contrast) >> 16;
    crv = (crv * contrast * saturation) >> 32;
    cbu = (cbu * contrast * saturation) >> 32;
    cgu = (cgu * contrast * saturation) >> 32;
    cgv = (cgv * contrast * saturation) >> 32;
    const int16_t y_coeff = round_to_int16(cy * (1 << 13));
    const int16_t vr_coeff = round_to_int16(crv * (1 << 13));
    const int16_t ub_coeff = round_to_int16(cbu * (1 << 13));
    const int16_t vg_coeff = round_to_int16(cgv * (1 << 13));
    const int16_t ug_coeff = round_to_int16(cgu * (1 << 13));
    const int16_t y_offset = round_to_int16(oy * (1 << 3));
    const int vshift = (f->format == AV_PIX_FMT_YUV422P || f->format == AV_PIX_FMT_YUVJ422P) ? 0 : 1;
    const size_t row = (size_t)f->width * 3;
    for (int y = 0; y < f->height; y++) {
        const uint8_t *py = f->data[0] + (ptrdiff_t)y * f->linesize[0];
        const uint8_t *pu = f->data[1] + (ptrdiff_t)(y >> vshift) * f->linesize[1];
        const uint8_t *pv = f->data[2] + (ptrdiff_t)(y >> vshift) * f->linesize[2];
        uint8_t *out = dst + (size_t)y * row;
        for (int x = 0; x < f->width; x++) {
            const int16_t yy = mulhi((int16_t)((py[x] << 3) - y_offset), y_coeff);
            const int16_t u = sat16((pu[x >> 1] << 3) - 1024);
            const int16_t v = sat16((pv[x >> 1] << 3) - 1024);
            const int16_t g = sat16(mulhi(u, ug_coeff) + mulhi(v, vg_coeff));
            out[3 * x + 0] = clip_u8(sat16(yy + mulhi(v, vr_coeff)));
            out[3 * x + 1] = clip_u8(sat16(yy + g));
            out[3 * x + 2] = clip_u8(sat16(yy + mulhi(u, ub_coeff)));
        }
    }
}

/* The frame's colour matrix, as the `ffmpeg` command line's scaler takes it
 * (BT.601 when the stream does not say). */
static const int *frame_matrix(const AVFrame *f) {
    int cs = f->colorspace;
    if (cs == AVCOL_SPC_UNSPECIFIED || cs == AVCOL_SPC_RGB || cs < 0 || cs > 10 || cs == 8)
        cs = SWS_CS_DEFAULT;
    return sws_getCoefficients(cs);
}

/* The next packet of the video stream (for a stream opened with
 * `external`): 1 with *data, *size valid until the next call; 0 at the end. */
int anjeon_video_packet(AnjeonVideo *v, const uint8_t **data, size_t *size) {
    int read_errors = 0;
    av_packet_unref(v->pkt);
    for (;;) {
        int r = av_read_frame(v->fmt, v->pkt);
        if (r < 0) {
            if (r != AVERROR_EOF && ++read_errors < 64)
                continue;
            return 0;
        }
        read_errors = 0;
        if (v->pkt->stream_index == v->stream && v->pkt->size > 0) {
            *data = v->pkt->data;
            *size = (size_t)v->pkt->size;
            return 1;
        }
        av_packet_unref(v->pkt);
    }
}

static int convert(AnjeonVideo *v, const AVFrame *f, uint8_t *dst, size_t len, char *err, size_t errlen);

/* Convert the frame `anjeon_video_next` returned to packed RGB24 in
 * `dst` (w * h * 3 bytes). 0 on success. */
int anjeon_video_rgb(AnjeonVideo *v, uint8_t *dst, size_t len, char *err, size_t errlen) {
    return convert(v, v->frame, dst, len, err, errlen);
}

/* Convert a picture decoded outside FFmpeg: planar YUV (layout 0 = 4:0:0,
 * 1 = 4:2:0, 2 = 4:2:2, 3 = 4:4:4; 8 or 10/12 bits), with the stream's
 * matrix coefficients (ISO/IEC 23091-2 codes, as AVColorSpace) and range,
 * exactly as a frame from FFmpeg's own decoder would be. */
int anjeon_video_planes_rgb(AnjeonVideo *v, const uint8_t *const planes[3],
                            const ptrdiff_t strides[3], int32_t w, int32_t h, int32_t layout,
                            int32_t bpc, int32_t matrix, int32_t full, uint8_t *dst, size_t len,
                            char *err, size_t errlen) {
    static const enum AVPixelFormat fmts[3][4] = {
        {AV_PIX_FMT_GRAY8, AV_PIX_FMT_YUV420P, AV_PIX_FMT_YUV422P, AV_PIX_FMT_YUV444P},
        {AV_PIX_FMT_GRAY10, AV_PIX_FMT_YUV420P10, AV_PIX_FMT_YUV422P10, AV_PIX_FMT_YUV444P10},
        {AV_PIX_FMT_GRAY12, AV_PIX_FMT_YUV420P12, AV_PIX_FMT_YUV422P12, AV_PIX_FMT_YUV444P12},
    };
    int depth = bpc == 8 ? 0 : bpc == 10 ? 1 : bpc == 12 ? 2 : -1;
    if (depth < 0 || layout < 0 || layout > 3 || w <= 0 || h <= 0) {
        snprintf(err, errlen, "unsupported picture: %d bits, layout %d, %dx%d", bpc, layout, w, h);
        return -1;
    }
    AVFrame *f = v->frame;
    av_frame_unref(f);
    f->format = fmts[depth][layout];
    f->width = w;
    f->height = h;
    for (int i = 0; i < 3; i++) {
        f->data[i] = (uint8_t *)planes[i];
        f->linesize[i] = (int)strides[i];
    }
    f->colorspace = (enum AVColorSpace)matrix;
    f->color_range = full ? AVCOL_RANGE_JPEG : AVCOL_RANGE_MPEG;
    int r = convert(v, f, dst, len, err, errlen);
    for (int i = 0; i < 3; i++)
        f->data[i] = NULL;
    return r;
}

static int convert(AnjeonVideo *v, const AVFrame *f, uint8_t *dst, size_t len, char *err, size_t errlen) {
    size_t row = (size_t)f->width * 3;
    if (len < row * (size_t)f->height) {
        snprintf(err, errlen, "output buffer too small");
        return -1;
    }
    const int *matrix = frame_matrix(f);
    const int full = is_full_range(f);
    if (takes_x86_path(f)) {
        yuv_to_rgb24_x86_exact(f, matrix, full, dst);
        return 0;
    }
    if (!v->sws || v->sws_fmt != f->format || v->sws_w != f->width || v->sws_h != f->height) {
        sws_freeContext(v->sws);
        v->sws = sws_getContext(f->width, f->height, f->format, f->width, f->height,
                                AV_PIX_FMT_RGB24, SWS_BICUBIC, NULL, NULL, NULL);
        if (!v->sws) {
            snprintf(err, errlen, "swscale cannot convert pixel format %d to RGB24", f->format);
            return -1;
        }
        v->sws_fmt = f->format;
        v->sws_w = f->width;
        v->sws_h = f->height;
        av_frame_unref(v->rgb);
        v->rgb->format = AV_PIX_FMT_RGB24;
        v->rgb->width = f->width;
        v->rgb->height = f->height;
        int r = av_frame_get_buffer(v->rgb, 0);
        if (r < 0) {
            set_err(err, errlen, "cannot allocate the RGB frame", r);
            v->sws_fmt = -1;
            return -1;
        }
    }
    /* The frame's matrix and range (a no-op when unchanged). */
    sws_setColorspaceDetails(v->sws, matrix, full, sws_getCoefficients(SWS_CS_DEFAULT), 1, 0,
                             1 << 16, 1 << 16);
    int r = sws_scale(v->sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height,
                      v->rgb->data, v->rgb->linesize);
    if (r < 0) {
        set_err(err, errlen, "swscale failed", r);
        return -1;
    }
    for (int y = 0; y < f->height; y++)
        memcpy(dst + (size_t)y * row, v->rgb->data[0] + (size_t)y * v->rgb->linesize[0], row);
    return 0;
}

int64_t anjeon_video_packet_errors(const AnjeonVideo *v) { return v->packet_errors; }

unsigned anjeon_ffmpeg_avcodec_version(void) { return avcodec_version(); }

/* 1 when this build can decode the codec named `name` (e.g. "hevc"). */
int anjeon_ffmpeg_has_decoder(const char *name) {
    const AVCodecDescriptor *d = avcodec_descriptor_get_by_name(name);
    return d && avcodec_find_decoder(d->id) != NULL;
}
