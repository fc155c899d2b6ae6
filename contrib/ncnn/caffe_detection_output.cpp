// CaffeDetectionOutput: Caffe SSD's DetectionOutput layer as an ncnn custom layer.
// See caffe_detection_output.h for the layer contract and README.md for how it was checked.
//
// Rounding.  Caffe keeps boxes in float fields and scores in vector<float>; a few steps of the
// CENTER_SIZE decode are done in double.  This file rounds at exactly those points and keeps
// Caffe's order of operations.  Products that feed an addition pass through `barrier()` (a
// volatile float) so that no compiler contracts them into a fused multiply-add, which would skip
// a rounding (GCC contracts across statements by default when FMA is available).  Do not build
// it with -ffast-math (it relies on NaN comparisons and on the exact float operations).

#include "caffe_detection_output.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(_MSC_VER)
#pragma fp_contract(off)
#endif

namespace {

enum
{
    CODE_CORNER = 1,
    CODE_CENTER_SIZE = 2,
    CODE_CORNER_SIZE = 3
};

// A float rounded and stored: the compiler can neither keep it in a wider format nor fuse the
// operation that produced it with the next one.
inline float barrier(float x)
{
    volatile float v = x;
    return v;
}

// std::max / std::min exactly as IntersectBBox uses them: the first argument unless the second
// compares greater (less).  With a NaN the comparison is false, so which box holds the NaN
// matters: JaccardOverlap(candidate, kept) passes over a NaN corner of the kept box.
inline float std_min(float a, float b)
{
    return b < a ? b : a;
}

inline float std_max(float a, float b)
{
    return a < b ? b : a;
}

// BBoxSize for normalized boxes: 0 for an inverted box (xmax < xmin or ymax < ymin), else w * h.
inline float bbox_size(const float* b)
{
    if (b[2] < b[0] || b[3] < b[1]) return 0.f;
    float w = b[2] - b[0];
    float h = b[3] - b[1];
    return w * h;
}

// JaccardOverlap(bbox1 = a, bbox2 = b) of normalized boxes (float32).  Boxes apart (b.xmin >
// a.xmax, b.xmax < a.xmin, same in y) overlap 0; otherwise the intersection's width and height
// must both be > 0 (NaN is not), and the overlap is inter / (size_a + size_b - inter): NaN for
// infinite boxes, and for a kept box b with a NaN corner (its size is NaN), which therefore
// removes every later candidate it is not apart from (a NaN overlap suppresses, see nms_class).
inline float jaccard_overlap(const float* a, float size_a, const float* b, float size_b)
{
    if (b[0] > a[2] || b[2] < a[0] || b[1] > a[3] || b[3] < a[1]) return 0.f;
    float iw = std_min(a[2], b[2]) - std_max(a[0], b[0]);
    float ih = std_min(a[3], b[3]) - std_max(a[1], b[1]);
    if (!(iw > 0.f && ih > 0.f)) return 0.f;
    float inter = barrier(iw * ih);
    float sum = size_a + size_b;
    return inter / (sum - inter);
}

// DecodeBBox without clipping, one prior.  p: prior box, v: its variances, l: the 4 deltas.
void decode_one(const float* p, const float* v, const float* l, int code_type, bool var_in_target, float* out)
{
    if (code_type == CODE_CORNER)
    {
        // xmin = prior.xmin + var0 * l0, ... (var = 1 when encoded in the target)
        for (int j = 0; j < 4; j++)
            out[j] = p[j] + (var_in_target ? l[j] : barrier(v[j] * l[j]));
        return;
    }

    const float pw = p[2] - p[0];
    const float ph = p[3] - p[1];

    if (code_type == CODE_CORNER_SIZE)
    {
        // xmin = prior.xmin + var0 * l0 * prior_width, ymin with the height, ...
        const float size[4] = {pw, ph, pw, ph};
        for (int j = 0; j < 4; j++)
        {
            float d = var_in_target ? l[j] : v[j] * l[j];
            out[j] = p[j] + barrier(d * size[j]);
        }
        return;
    }

    // CENTER_SIZE.  Prior centre: (xmin + xmax) / 2 (a float sum, halved exactly).
    const float pcx = (p[0] + p[2]) * 0.5f;
    const float pcy = (p[1] + p[3]) * 0.5f;
    float dx = var_in_target ? l[0] : v[0] * l[0];
    float dy = var_in_target ? l[1] : v[1] * l[1];
    float ex = var_in_target ? l[2] : v[2] * l[2];
    float ey = var_in_target ? l[3] : v[3] * l[3];
    // centre = var0 * l0 * prior_width + prior_centre, in float
    const float cx = barrier(dx * pw) + pcx;
    const float cy = barrier(dy * ph) + pcy;
    // width = exp(var2 * l2) * prior_width: exp of the float in double, the product in double,
    // stored in a float
    const float w = (float)(std::exp((double)ex) * (double)pw);
    const float h = (float)(std::exp((double)ey) * (double)ph);
    // centre -/+ width / 2. in double, stored in the float box
    const double hw = (double)w / 2.;
    const double hh = (double)h / 2.;
    out[0] = (float)((double)cx - hw);
    out[1] = (float)((double)cy - hh);
    out[2] = (float)((double)cx + hw);
    out[3] = (float)((double)cy + hh);
}

struct ByScoreDescending
{
    const float* scores;
    explicit ByScoreDescending(const float* s)
        : scores(s)
    {
    }
    bool operator()(int a, int b) const
    {
        return scores[a] > scores[b];
    }
};

struct Detection
{
    int label;
    int prior;
    float score;
};

struct DetectionScoreDescending
{
    bool operator()(const Detection& a, const Detection& b) const
    {
        return a.score > b.score;
    }
};

struct DetectionLabelAscending
{
    bool operator()(const Detection& a, const Detection& b) const
    {
        return a.label < b.label;
    }
};

// ApplyNMSFast for one class.  scores: this class's score per prior (stride `stride`),
// boxes/sizes: the decoded boxes of the loc class used.  Appends the kept priors, in NMS order.
void nms_class(const std::vector<float>& class_scores, const float* boxes, const float* sizes, float score_threshold,
               int top_k, float nms_threshold, float eta, std::vector<int>& kept)
{
    // GetMaxScoreIndex: score > threshold, stable sort by descending score (ties: lower prior
    // first), then the first top_k if top_k > -1.  NaN scores never pass the threshold.
    std::vector<int> order;
    const int num_priors = (int)class_scores.size();
    for (int i = 0; i < num_priors; i++)
    {
        if (class_scores[i] > score_threshold) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), ByScoreDescending(&class_scores[0]));
    if (top_k > -1 && (size_t)top_k < order.size()) order.resize(top_k);

    // Greedy NMS: keep a candidate iff its overlap with every kept box is <= the (adaptive)
    // threshold, so a NaN overlap rejects.  After each keep, threshold *= eta (float) while
    // eta < 1 and threshold > 0.5.
    float threshold = nms_threshold;
    const size_t first = kept.size();
    for (size_t i = 0; i < order.size(); i++)
    {
        const int idx = order[i];
        const float* box = boxes + (size_t)idx * 4;
        bool keep = true;
        for (size_t k = first; k < kept.size(); k++)
        {
            const int kidx = kept[k];
            float overlap = jaccard_overlap(box, sizes[idx], boxes + (size_t)kidx * 4, sizes[kidx]);
            if (!(overlap <= threshold))
            {
                keep = false;
                break;
            }
        }
        if (keep)
        {
            kept.push_back(idx);
            if (eta < 1.f && threshold > 0.5f) threshold = barrier(threshold * eta);
        }
    }
}

// The bottom as one contiguous float run (removes the channel padding of 3D/4D mats).
ncnn::Mat flat(const ncnn::Mat& m, ncnn::Allocator* allocator)
{
    return m.reshape(m.w * m.h * m.d * m.c, allocator);
}

} // namespace

CaffeDetectionOutput::CaffeDetectionOutput()
{
    one_blob_only = false;
    support_inplace = false;
    support_packing = false;
}

int CaffeDetectionOutput::load_param(const ncnn::ParamDict& pd)
{
    num_classes = pd.get(0, 0);
    share_location = pd.get(1, 1);
    background_label_id = pd.get(2, 0);
    nms_threshold = pd.get(3, 0.3f);
    top_k = pd.get(4, -1);
    eta = pd.get(5, 1.f);
    keep_top_k = pd.get(6, -1);
    confidence_threshold = pd.get(7, -FLT_MAX);
    code_type = pd.get(8, (int)CODE_CENTER_SIZE);
    variance_encoded_in_target = pd.get(9, 0);

    // The checks of Caffe's DetectionOutputLayer::LayerSetUp (Caffe aborts on them).
    if (num_classes < 1)
    {
        NCNN_LOGE("CaffeDetectionOutput: num_classes (param 0) must be >= 1, got %d", num_classes);
        return -1;
    }
    if (code_type < CODE_CORNER || code_type > CODE_CORNER_SIZE)
    {
        NCNN_LOGE("CaffeDetectionOutput: code_type (param 8) must be 1, 2 or 3, got %d", code_type);
        return -1;
    }
    if (!(nms_threshold >= 0.f))
    {
        NCNN_LOGE("CaffeDetectionOutput: nms_threshold (param 3) must be >= 0");
        return -1;
    }
    if (!(eta > 0.f && eta <= 1.f))
    {
        NCNN_LOGE("CaffeDetectionOutput: eta (param 5) must be in (0, 1]");
        return -1;
    }
    if (share_location && background_label_id == -1)
    {
        // The shared loc predictions carry label -1 and would be skipped as background.
        NCNN_LOGE("CaffeDetectionOutput: share_location with background_label_id -1 is rejected by Caffe");
        return -1;
    }
    return 0;
}

int CaffeDetectionOutput::forward(const std::vector<ncnn::Mat>& bottom_blobs, std::vector<ncnn::Mat>& top_blobs,
                                  const ncnn::Option& opt) const
{
    if (bottom_blobs.size() != 3 || top_blobs.size() != 1) return -1;
    for (int i = 0; i < 3; i++)
    {
        if (bottom_blobs[i].empty() || bottom_blobs[i].elemsize != 4u || bottom_blobs[i].elempack != 1)
        {
            NCNN_LOGE("CaffeDetectionOutput: bottom %d must be a non-empty fp32 mat with elempack 1", i);
            return -1;
        }
    }

    const ncnn::Mat loc = flat(bottom_blobs[0], opt.workspace_allocator);
    const ncnn::Mat conf = flat(bottom_blobs[1], opt.workspace_allocator);
    const ncnn::Mat prior = flat(bottom_blobs[2], opt.workspace_allocator);
    if (loc.empty() || conf.empty() || prior.empty()) return -100;

    if (prior.w % 8 != 0)
    {
        NCNN_LOGE("CaffeDetectionOutput: prior has %d values, expected num_priors * 8", prior.w);
        return -1;
    }
    const int num_priors = prior.w / 8;
    const int num_loc_classes = share_location ? 1 : num_classes;
    if (loc.w != num_priors * num_loc_classes * 4 || conf.w != num_priors * num_classes)
    {
        NCNN_LOGE("CaffeDetectionOutput: loc has %d values and conf %d, expected %d and %d for %d priors", loc.w,
                  conf.w, num_priors * num_loc_classes * 4, num_priors * num_classes, num_priors);
        return -1;
    }

    const float* loc_data = loc;
    const float* conf_data = conf;
    const float* prior_boxes = prior;
    const float* prior_variances = (const float*)prior + (size_t)num_priors * 4;

    // CENTER_SIZE / CORNER_SIZE divide by nothing but Caffe CHECKs prior width/height > 0 and
    // aborts; we fail the forward pass instead.
    if (code_type != CODE_CORNER)
    {
        for (int p = 0; p < num_priors; p++)
        {
            const float* b = prior_boxes + (size_t)p * 4;
            if (!(b[2] - b[0] > 0.f) || !(b[3] - b[1] > 0.f))
            {
                NCNN_LOGE("CaffeDetectionOutput: prior box %d has no positive width/height", p);
                return -1;
            }
        }
    }

    // Decode every prior for every loc class: boxes[(lc * P + p) * 4 + j], sizes[lc * P + p].
    std::vector<float> boxes((size_t)num_loc_classes * num_priors * 4);
    std::vector<float> sizes((size_t)num_loc_classes * num_priors);
    for (int lc = 0; lc < num_loc_classes; lc++)
    {
        for (int p = 0; p < num_priors; p++)
        {
            float* out = &boxes[((size_t)lc * num_priors + p) * 4];
            decode_one(prior_boxes + (size_t)p * 4, prior_variances + (size_t)p * 4,
                       loc_data + ((size_t)p * num_loc_classes + lc) * 4, code_type, variance_encoded_in_target != 0,
                       out);
            sizes[(size_t)lc * num_priors + p] = bbox_size(out);
        }
    }

    // Per class (ascending, background skipped): NMS.  Kept detections in (label, NMS) order.
    std::vector<Detection> dets;
    std::vector<float> class_scores(num_priors);
    std::vector<int> kept;
    for (int c = 0; c < num_classes; c++)
    {
        if (c == background_label_id) continue;
        const int lc = share_location ? 0 : c;
        for (int p = 0; p < num_priors; p++)
            class_scores[p] = conf_data[(size_t)p * num_classes + c];
        kept.clear();
        nms_class(class_scores, &boxes[(size_t)lc * num_priors * 4], &sizes[(size_t)lc * num_priors],
                  confidence_threshold, top_k, nms_threshold, eta, kept);
        for (size_t k = 0; k < kept.size(); k++)
        {
            Detection d;
            d.label = c;
            d.prior = kept[k];
            d.score = class_scores[kept[k]];
            dets.push_back(d);
        }
    }

    // keep_top_k: the keep_top_k best scores over all classes (stable: ties keep label, then
    // NMS order), then regrouped by label ascending (Caffe's std::map), score order kept.
    if (keep_top_k > -1 && dets.size() > (size_t)keep_top_k)
    {
        std::stable_sort(dets.begin(), dets.end(), DetectionScoreDescending());
        dets.resize(keep_top_k);
        std::stable_sort(dets.begin(), dets.end(), DetectionLabelAscending());
    }

    ncnn::Mat& top = top_blobs[0];
    if (dets.empty())
    {
        // Caffe's "no detection" row for one image, without the image column.
        top.create(6, 1, 4u, opt.blob_allocator);
        if (top.empty()) return -100;
        top.fill(-1.f);
        return 0;
    }

    top.create(6, (int)dets.size(), 4u, opt.blob_allocator);
    if (top.empty()) return -100;
    for (size_t i = 0; i < dets.size(); i++)
    {
        const Detection& d = dets[i];
        const int lc = share_location ? 0 : d.label;
        const float* b = &boxes[((size_t)lc * num_priors + d.prior) * 4];
        float* row = top.row((int)i);
        row[0] = (float)d.label;
        row[1] = d.score;
        row[2] = b[0];
        row[3] = b[1];
        row[4] = b[2];
        row[5] = b[3];
    }
    return 0;
}

DEFINE_LAYER_CREATOR(CaffeDetectionOutput)

int register_caffe_detection_output(ncnn::Net& net)
{
    return net.register_custom_layer("CaffeDetectionOutput", CaffeDetectionOutput_layer_creator);
}
