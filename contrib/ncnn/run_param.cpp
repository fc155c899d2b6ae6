// run_param: run an ncnn model that may use CaffeDetectionOutput, on raw float32 inputs.
//
//   run_param MODEL.param MODEL.bin OUT_DIR NAME=FILE.bin:W[,H[,C]] ... -- BLOB ...
//
// MODEL.bin may be "-" (or an empty file) for a model without weights.  Each input file holds
// W*H*C float32 values (native byte order), fed as a 1D (W), 2D (W,H) or 3D (W,H,C) mat.  Each
// requested blob k (0, 1, ... in the order given) is written to OUT_DIR/blob_k.bin as its
// float32 values without channel padding, and OUT_DIR/blob_k.txt holds one line
// "dims w h d c elemsize elempack".  Exit status: 0 on success, 2 for bad arguments or files,
// 3 when load_param/load_model fail, 4 when an input or extract fails (the ncnn return code is
// printed on stderr as "ncnn error <code>").

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "caffe_detection_output.h"
#include "datareader.h"
#include "net.h"

namespace {

struct InputSpec
{
    std::string name;
    std::string path;
    int w, h, c;
    int dims;
};

bool parse_input(const char* arg, InputSpec& spec)
{
    std::string s(arg);
    size_t eq = s.find('=');
    size_t colon = s.rfind(':');
    if (eq == std::string::npos || colon == std::string::npos || colon < eq) return false;
    spec.name = s.substr(0, eq);
    spec.path = s.substr(eq + 1, colon - eq - 1);
    int v[3] = {1, 1, 1};
    int n = sscanf(s.c_str() + colon + 1, "%d,%d,%d", &v[0], &v[1], &v[2]);
    if (n < 1 || v[0] < 1 || v[1] < 1 || v[2] < 1) return false;
    spec.w = v[0];
    spec.h = v[1];
    spec.c = v[2];
    spec.dims = n;
    return true;
}

bool read_floats(const std::string& path, std::vector<float>& data)
{
    FILE* fp = fopen(path.c_str(), "rb");
    if (!fp) return false;
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    if (size < 0 || size % 4 != 0)
    {
        fclose(fp);
        return false;
    }
    data.resize(size / 4);
    size_t got = data.empty() ? 0 : fread(&data[0], 4, data.size(), fp);
    fclose(fp);
    return got == data.size();
}

long file_size(const char* path)
{
    FILE* fp = fopen(path, "rb");
    if (!fp) return -1;
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fclose(fp);
    return size;
}

bool write_blob(const std::string& out_dir, int k, const ncnn::Mat& m)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/blob_%d.txt", out_dir.c_str(), k);
    FILE* fp = fopen(path, "wb");
    if (!fp) return false;
    fprintf(fp, "%d %d %d %d %d %d %d\n", m.dims, m.w, m.h, m.d, m.c, (int)m.elemsize, m.elempack);
    fclose(fp);

    snprintf(path, sizeof(path), "%s/blob_%d.bin", out_dir.c_str(), k);
    fp = fopen(path, "wb");
    if (!fp) return false;
    const size_t channel_bytes = (size_t)m.w * m.h * m.d * m.elemsize;
    for (int q = 0; q < m.c; q++)
    {
        const unsigned char* ptr = (const unsigned char*)m.data + m.cstep * q * m.elemsize;
        if (channel_bytes && fwrite(ptr, 1, channel_bytes, fp) != channel_bytes)
        {
            fclose(fp);
            return false;
        }
    }
    fclose(fp);
    return true;
}

int usage()
{
    fprintf(stderr, "usage: run_param MODEL.param MODEL.bin|- OUT_DIR NAME=FILE.bin:W[,H[,C]] ... -- BLOB ...\n");
    return 2;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 4) return usage();
    const char* param_path = argv[1];
    const char* bin_path = argv[2];
    const std::string out_dir = argv[3];

    std::vector<InputSpec> inputs;
    std::vector<std::string> outputs;
    bool after_sep = false;
    for (int i = 4; i < argc; i++)
    {
        if (!after_sep && strcmp(argv[i], "--") == 0)
        {
            after_sep = true;
            continue;
        }
        if (after_sep)
        {
            outputs.push_back(argv[i]);
            continue;
        }
        InputSpec spec;
        if (!parse_input(argv[i], spec))
        {
            fprintf(stderr, "bad input spec: %s\n", argv[i]);
            return usage();
        }
        inputs.push_back(spec);
    }
    if (outputs.empty()) return usage();

    ncnn::Net net;
    net.opt.num_threads = 1;
    if (register_caffe_detection_output(net) != 0)
    {
        fprintf(stderr, "register_custom_layer failed\n");
        return 3;
    }
    int ret = net.load_param(param_path);
    if (ret != 0)
    {
        fprintf(stderr, "load_param failed\nncnn error %d\n", ret);
        return 3;
    }
    if (strcmp(bin_path, "-") != 0 && file_size(bin_path) > 0)
    {
        ret = net.load_model(bin_path);
    }
    else
    {
        // No weights: layers that read none load from an empty reader (this also creates the
        // layers' pipelines, as load_model always does).
        static const unsigned char nothing[16] = {0};
        const unsigned char* mem = nothing;
        ncnn::DataReaderFromMemory dr(mem);
        ret = net.load_model(dr);
    }
    if (ret != 0)
    {
        fprintf(stderr, "load_model failed\nncnn error %d\n", ret);
        return 3;
    }

    ncnn::Extractor ex = net.create_extractor();
    for (size_t i = 0; i < inputs.size(); i++)
    {
        const InputSpec& s = inputs[i];
        std::vector<float> data;
        if (!read_floats(s.path, data) || data.size() != (size_t)s.w * s.h * s.c)
        {
            fprintf(stderr, "cannot read %d floats from %s\n", s.w * s.h * s.c, s.path.c_str());
            return 2;
        }
        ncnn::Mat m;
        if (s.dims == 1)
            m.create(s.w);
        else if (s.dims == 2)
            m.create(s.w, s.h);
        else
            m.create(s.w, s.h, s.c);
        if (m.empty()) return 2;
        const size_t per_channel = (size_t)s.w * s.h;
        for (int q = 0; q < m.c; q++)
            memcpy(m.channel(q).data, &data[per_channel * q], per_channel * sizeof(float));
        ret = ex.input(s.name.c_str(), m);
        if (ret != 0)
        {
            fprintf(stderr, "input %s failed\nncnn error %d\n", s.name.c_str(), ret);
            return 4;
        }
    }

    for (size_t k = 0; k < outputs.size(); k++)
    {
        ncnn::Mat out;
        ret = ex.extract(outputs[k].c_str(), out);
        if (ret != 0)
        {
            fprintf(stderr, "extract %s failed\nncnn error %d\n", outputs[k].c_str(), ret);
            return 4;
        }
        if (!write_blob(out_dir, (int)k, out))
        {
            fprintf(stderr, "cannot write blob %s to %s\n", outputs[k].c_str(), out_dir.c_str());
            return 2;
        }
    }
    return 0;
}
