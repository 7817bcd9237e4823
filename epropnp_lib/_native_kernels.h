/* The per-problem kernels of _native.c for one input type: included once with T = float and
 * once with T = double (NAME(f) names the instance), so that no load branches on the dtype. */

/* normalized_image_points' closed-form inverse of K's 2x2 block, from the row-major cam. */
static InvK NAME(inv_k)(const T *cam)
{
    InvK ik;
    ik.k00 = (double)cam[0];
    ik.k11 = (double)cam[4];
    ik.cx = (double)cam[2];
    ik.cy = (double)cam[5];
    const double k01 = (double)cam[1], k10 = (double)cam[3];
    const double det = ik.k00 * ik.k11 - k01 * k10;
    ik.i00 = ik.k11 / det;
    ik.i01 = -k01 / det;
    ik.i10 = -k10 / det;
    ik.i11 = ik.k00 / det;
    return ik;
}

/* init_4dof's per-point terms: normalised image point (u, v), object point, and the weights
 * scaled by the focal lengths (wrow). */
static inline void NAME(point4)(const InvK *ik, const T *x3d, const T *x2d, const T *w2d,
                                Py_ssize_t i, double *u, double *v, double *bx, double *by,
                                double *bz, double *wu, double *wv)
{
    normalized(ik, (double)x2d[2 * i], (double)x2d[2 * i + 1], u, v);
    *bx = (double)x3d[3 * i];
    *by = (double)x3d[3 * i + 1];
    *bz = (double)x3d[3 * i + 2];
    *wu = (double)w2d[2 * i] * ik->k00;
    *wv = (double)w2d[2 * i + 1] * ik->k11;
}

/* One problem: see the file's header.  x3d (n, 3), x2d (n, 2), w2d (n, 2), cam (3, 3). */
static void NAME(init_one)(Py_ssize_t n, const T *x3d, const T *x2d, const T *w2d, const T *cam,
                           double tiny, double planarity, double *out)
{
    const InvK ik = NAME(inv_k)(cam);

    /* dlt_gram: the w^2-weighted centroid, w = wu + wv */
    double sw2 = 0.0, c[3] = {0.0, 0.0, 0.0};
    for (Py_ssize_t i = 0; i < n; ++i) {
        const double w = (double)w2d[2 * i] + (double)w2d[2 * i + 1], w2 = w * w;
        sw2 += w2;
        for (int a = 0; a < 3; ++a) c[a] += w2 * (double)x3d[3 * i + a];
    }
    const double denom = sw2 > tiny ? sw2 : tiny;
    for (int a = 0; a < 3; ++a) c[a] /= denom;

    /* The moments M = sum w^2 X X^T and its u-, v- and (u^2 + v^2)-weighted versions, X =
     * (x - c, 1); upper triangles, 10 entries each (dlt_normal_matrix's blocks). */
    double mom[4][10];
    memset(mom, 0, sizeof mom);
    for (Py_ssize_t i = 0; i < n; ++i) {
        const double w = (double)w2d[2 * i] + (double)w2d[2 * i + 1], w2 = w * w;
        double u, v;
        normalized(&ik, (double)x2d[2 * i], (double)x2d[2 * i + 1], &u, &v);
        const double p0 = (double)x3d[3 * i] - c[0], p1 = (double)x3d[3 * i + 1] - c[1];
        const double p2 = (double)x3d[3 * i + 2] - c[2];
        const double xx[10] = {p0 * p0, p0 * p1, p0 * p2, p0, p1 * p1, p1 * p2, p1, p2 * p2, p2, 1.0};
        const double f[4] = {w2, w2 * u, w2 * v, w2 * (u * u + v * v)};
        for (int m = 0; m < 4; ++m)
            for (int e = 0; e < 10; ++e) mom[m][e] += f[m] * xx[e];
    }
    /* full 4x4 blocks: M, Mu, Mv, Muv */
    static const int UPPER[4][4] = {{0, 1, 2, 3}, {1, 4, 5, 6}, {2, 5, 7, 8}, {3, 6, 8, 9}};
    double blk[4][16];
    for (int m = 0; m < 4; ++m)
        for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) blk[m][4 * a + b] = mom[m][UPPER[a][b]];
    const double *bm = blk[0], *bu = blk[1], *bv = blk[2], *buv = blk[3];

    /* dlt_normal_matrix: [[M, 0, -Mu], [0, M, -Mv], [-Mu, -Mv, Muv]] */
    double *ata = out + OUT_ATA;
    memset(ata, 0, 144 * sizeof(double));
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
            ata[12 * a + b] = bm[4 * a + b];
            ata[12 * (4 + a) + 4 + b] = bm[4 * a + b];
            ata[12 * a + 8 + b] = -bu[4 * a + b];
            ata[12 * (8 + a) + b] = -bu[4 * a + b];
            ata[12 * (4 + a) + 8 + b] = -bv[4 * a + b];
            ata[12 * (8 + a) + 4 + b] = -bv[4 * a + b];
            ata[12 * (8 + a) + 8 + b] = buv[4 * a + b];
        }

    /* _dlt_rotation_block: Ku = M^-1 Mu, Kv = M^-1 Mv with M = diag(S, sum w^2);
     * C = Muv - Mu Ku - Mv Kv; q = -C_qq^-1 C_q1; rows p_1 = Ku (q, 1), p_2 = Kv (q, 1). */
    const double s3[9] = {bm[0], bm[1], bm[2], bm[4], bm[5], bm[6], bm[8], bm[9], bm[10]};
    double sinv[9], ku[16], kv[16], cm[16];
    inv3_sym(s3, sinv);
    for (int b = 0; b < 4; ++b) {
        for (int a = 0; a < 3; ++a) {
            ku[4 * a + b] = sinv[3 * a] * bu[b] + sinv[3 * a + 1] * bu[4 + b] + sinv[3 * a + 2] * bu[8 + b];
            kv[4 * a + b] = sinv[3 * a] * bv[b] + sinv[3 * a + 1] * bv[4 + b] + sinv[3 * a + 2] * bv[8 + b];
        }
        ku[12 + b] = bu[12 + b] / bm[15];
        kv[12 + b] = bv[12 + b] / bm[15];
    }
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
            double s = buv[4 * a + b];
            for (int l = 0; l < 4; ++l) s -= bu[4 * a + l] * ku[4 * l + b] + bv[4 * a + l] * kv[4 * l + b];
            cm[4 * a + b] = s;
        }
    const double c3[9] = {cm[0], cm[1], cm[2], cm[4], cm[5], cm[6], cm[8], cm[9], cm[10]};
    double cinv[9], q1[4], amat[9];
    inv3_sym(c3, cinv);
    for (int a = 0; a < 3; ++a)
        q1[a] = -(cinv[3 * a] * cm[3] + cinv[3 * a + 1] * cm[7] + cinv[3 * a + 2] * cm[11]);
    q1[3] = 1.0;
    for (int a = 0; a < 3; ++a) {
        amat[a] = ku[4 * a] * q1[0] + ku[4 * a + 1] * q1[1] + ku[4 * a + 2] * q1[2] + ku[4 * a + 3];
        amat[3 + a] = kv[4 * a] * q1[0] + kv[4 * a + 1] * q1[1] + kv[4 * a + 2] * q1[2] + kv[4 * a + 3];
        amat[6 + a] = q1[a];
    }
    double rot0[9];
    orthonormalize(amat, rot0);
    refine_on_so3(ata, rot0, c, out + OUT_POSE);

    /* init_6dof's planarity test on S = M[:3, :3]: det S > ratio ||S||_F^3, NaN-safe */
    double need = 1.0;
    if (n >= 6) {
        double rc[3], frob2 = 0.0;
        cross3(s3 + 3, s3 + 6, rc);
        const double det_s = dot3(s3, rc);
        for (int i = 0; i < 9; ++i) frob2 += s3[i] * s3[i];
        const double frob = sqrt(frob2);
        need = det_s > planarity * frob * frob * frob ? 0.0 : 1.0;
    }
    out[OUT_NEED] = need;
    memcpy(out + OUT_CENTRE, c, sizeof c);
}

/* One problem of cost.point_terms + cost.augmented_normal_matrix: the robust cost, the augmented
 * normal matrix [[H, g], [g^T, sum rho' |f|^2]] ((dof + 1) x (dof + 1)) and the depths, for
 * Pose6DoF (pose (t, q), dof 6) or Pose4DoF (pose (t, yaw), dof 4).  x, wk, wc are the
 * component-major cost.PointSet arrays with component stride cs and this problem's n points
 * contiguous; without has_delta, the plain squared cost (no kernel).  The points go in chunks
 * of STATE_CHUNK: a first pass writes the Jacobian columns (then the residual) of both image
 * rows, one contiguous array per column, and their rho'-weighted copies; a second adds the
 * distinct entries as dot products over those arrays (which vectorise, and stay in the L1
 * cache). */
static void NAME(state_one)(Py_ssize_t n, Py_ssize_t cs, int dof, const T *pose, const T *x,
                            const T *wk, const T *wc, int has_delta, double delta, double tiny,
                            double min_depth, T *cost, T *normal, T *depth)
{
    const double t0 = (double)pose[0], t1 = (double)pose[1], t2 = (double)pose[2];
    double r[9];
    if (dof == 6) {
        const double q[4] = {(double)pose[3], (double)pose[4], (double)pose[5], (double)pose[6]};
        quat_to_matrix(q, r);
    } else { /* yaw about the camera y axis: Pose4DoF.rotate */
        const double c = cos((double)pose[3]), s = sin((double)pose[3]);
        const double ry[9] = {c, 0.0, s, 0.0, 1.0, 0.0, -s, 0.0, c};
        memcpy(r, ry, sizeof ry);
    }
    const int nc = dof + 1; /* Jacobian columns, then the residual */
    double col[7][2 * STATE_CHUNK], wcol[7][2 * STATE_CHUNK]; /* [column][row * len + i] */
    double acc[28];
    memset(acc, 0, sizeof acc);
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += STATE_CHUNK) {
        const Py_ssize_t len = n - start < STATE_CHUNK ? n - start : STATE_CHUNK;
        for (Py_ssize_t j = 0; j < len; ++j) {
            const Py_ssize_t i = start + j;
            const double x0 = (double)x[i], x1 = (double)x[cs + i], x2 = (double)x[2 * cs + i];
            const double p0 = r[0] * x0 + r[1] * x1 + r[2] * x2;
            const double p1 = r[3] * x0 + r[4] * x1 + r[5] * x2;
            const double p2 = r[6] * x0 + r[7] * x1 + r[8] * x2;
            const double z = p2 + t2;
            depth[i] = (T)z;
            const double inv_z = 1.0 / (z > min_depth ? z : min_depth);
            const double dz = z <= min_depth ? 0.0 : -inv_z;
            double c[2][7];
            double sq = 0.0;
            for (int row = 0; row < 2; ++row) {
                /* wk[row][c] = w_row K[row][c]; wc[row] = w_row (u_row - c_row) */
                const double a0 = (double)wk[(2 * row) * cs + i] * inv_z;
                const double a1 = (double)wk[(2 * row + 1) * cs + i] * inv_z;
                const double wr = a0 * (p0 + t0) + a1 * (p1 + t1);
                const double res = wr - (double)wc[row * cs + i];
                const double a2 = wr * dz;
                c[row][0] = a0;
                c[row][1] = a1;
                c[row][2] = a2;
                if (dof == 6) { /* Pose6DoF.rotation_columns: p x a */
                    c[row][3] = p1 * a2 - p2 * a1;
                    c[row][4] = p2 * a0 - p0 * a2;
                    c[row][5] = p0 * a1 - p1 * a0;
                } else { /* Pose4DoF.rotation_columns: a . (e_y x p) */
                    c[row][3] = a0 * p2 - a2 * p0;
                }
                c[row][dof] = res;
                sq += res * res;
            }
            double weight = 1.0, half_rho = 0.5 * sq;
            if (has_delta) {
                weight = delta / sqrt(sq > tiny ? sq : tiny);
                weight = weight < 1.0 ? weight : 1.0;
                half_rho = sq * (weight - 0.5 * weight * weight);
            }
            total += half_rho;
            for (int a = 0; a < nc; ++a)
                for (int row = 0; row < 2; ++row) {
                    col[a][row * len + j] = c[row][a];
                    wcol[a][row * len + j] = weight * c[row][a];
                }
        }
        const Py_ssize_t m = 2 * len;
        int k = 0;
        for (int a = 0; a < nc; ++a) {
            const double *u = wcol[a];
            for (int b = a; b < nc; ++b) {
                const double *v = col[b];
                double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
                Py_ssize_t j = 0;
                for (; j + 4 <= m; j += 4) {
                    s0 += u[j] * v[j];
                    s1 += u[j + 1] * v[j + 1];
                    s2 += u[j + 2] * v[j + 2];
                    s3 += u[j + 3] * v[j + 3];
                }
                for (; j < m; ++j) s0 += u[j] * v[j];
                acc[k++] += (s0 + s1) + (s2 + s3);
            }
        }
    }
    *cost = (T)total;
    int k = 0;
    for (int a = 0; a < nc; ++a)
        for (int b = a; b < nc; ++b) {
            normal[nc * a + b] = (T)acc[k];
            normal[nc * b + a] = (T)acc[k++];
        }
}

/* One problem of init.init_4dof: yaw and translation by linear least squares in (cos, sin, t),
 * then the translation re-solved for the normalised (cos, sin).  Writes (t, yaw). */
static void NAME(init4_one)(Py_ssize_t n, const T *x3d, const T *x2d, const T *w2d,
                            const T *cam, T *pose)
{
    const InvK ik = NAME(inv_k)(cam);
    double ata[25], atb[5];
    memset(ata, 0, sizeof ata);
    memset(atb, 0, sizeof atb);
    for (Py_ssize_t i = 0; i < n; ++i) {
        double u, v, bx, by, bz, wu, wv;
        NAME(point4)(&ik, x3d, x2d, w2d, i, &u, &v, &bx, &by, &bz, &wu, &wv);
        const double ru[5] = {wu * (u * bz - bx), -wu * (u * bx + bz), -wu, 0.0, wu * u};
        const double rv[5] = {wv * v * bz, -wv * v * bx, 0.0, -wv, wv * v};
        const double b_v = wv * by; /* b_u = 0 */
        for (int a = 0; a < 5; ++a) {
            for (int b = a; b < 5; ++b) ata[5 * a + b] += ru[a] * ru[b] + rv[a] * rv[b];
            atb[a] += rv[a] * b_v;
        }
    }
    double diag_max = 0.0;
    for (int a = 0; a < 5; ++a) {
        for (int b = 0; b < a; ++b) ata[5 * a + b] = ata[5 * b + a];
        const double d = fabs(ata[6 * a]);
        diag_max = d > diag_max ? d : diag_max;
    }
    const double ridge = 1e-9 * (diag_max > 1e-30 ? diag_max : 1e-30);
    for (int a = 0; a < 5; ++a) ata[6 * a] += ridge;
    double sol[5];
    solve_lu(5, ata, atb, sol);
    const double yaw = atan2(sol[1], sol[0]), c = cos(yaw), s = sin(yaw);
    double m[9], rhs[3];
    memset(m, 0, sizeof m);
    memset(rhs, 0, sizeof rhs);
    for (Py_ssize_t i = 0; i < n; ++i) {
        double u, v, bx, by, bz, wu, wv;
        NAME(point4)(&ik, x3d, x2d, w2d, i, &u, &v, &bx, &by, &bz, &wu, &wv);
        const double cu = c * (u * bz - bx) - s * (u * bx + bz);
        const double cv = c * v * bz - s * v * bx - by;
        const double au[3] = {-wu, 0.0, wu * u}, av[3] = {0.0, -wv, wv * v};
        for (int a = 0; a < 3; ++a) {
            for (int b = 0; b < 3; ++b) m[3 * a + b] += au[a] * au[b] + av[a] * av[b];
            rhs[a] -= au[a] * wu * cu + av[a] * wv * cv;
        }
    }
    for (int a = 0; a < 3; ++a) m[4 * a] += 1e-12;
    double t[3];
    solve_lu(3, m, rhs, t);
    pose[0] = (T)t[0];
    pose[1] = (T)t[1];
    pose[2] = (T)t[2];
    pose[3] = (T)yaw;
}
