// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vnc;

/// <summary>
/// DES encryption (FIPS 46-3) of single 64-bit blocks, for RFB's VNC authentication (RFC 6143 7.2.2): the client
/// encrypts the server's 16-byte challenge in ECB mode under the password, whose bytes are used with their bits
/// mirrored (the historical VNC quirk). Written here because .NET's DES goes through OpenSSL, whose version 3 keeps
/// single DES in the legacy provider, and loading OpenSSL into every VMM for one cipher is not worth it.
/// </summary>
public static class VncDes
{
    private static readonly byte[] Ip =
    [
        58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4, 62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40, 32, 24, 16, 8,
        57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3, 61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7,
    ];
    private static readonly byte[] Fp =
    [
        40, 8, 48, 16, 56, 24, 64, 32, 39, 7, 47, 15, 55, 23, 63, 31, 38, 6, 46, 14, 54, 22, 62, 30, 37, 5, 45, 13, 53, 21, 61, 29,
        36, 4, 44, 12, 52, 20, 60, 28, 35, 3, 43, 11, 51, 19, 59, 27, 34, 2, 42, 10, 50, 18, 58, 26, 33, 1, 41, 9, 49, 17, 57, 25,
    ];
    private static readonly byte[] E =
    [
        32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15, 16, 17,
        16, 17, 18, 19, 20, 21, 20, 21, 22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28, 29, 30, 31, 32, 1,
    ];
    private static readonly byte[] P =
    [
        16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10, 2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25,
    ];
    private static readonly byte[] Pc1 =
    [
        57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60, 52, 44, 36,
        63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4,
    ];
    private static readonly byte[] Pc2 =
    [
        14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2,
        41, 52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
    ];
    private static readonly byte[] Shifts = [1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1];
    private static readonly byte[,] S =
    {
        { 14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7, 0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8,
          4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0, 15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13 },
        { 15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10, 3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5,
          0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15, 13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9 },
        { 10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8, 13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1,
          13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7, 1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12 },
        { 7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15, 13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9,
          10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4, 3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14 },
        { 2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9, 14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6,
          4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14, 11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3 },
        { 12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11, 10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8,
          9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6, 4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13 },
        { 4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1, 13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6,
          1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2, 6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12 },
        { 13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7, 1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2,
          7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8, 2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11 },
    };

    // Bit n (1-based, from the most significant of an inBits-wide value) moved to position i of the result.
    private static ulong Permute(ulong v, byte[] table, int inBits)
    {
        ulong r = 0;
        foreach (byte t in table) r = r << 1 | (v >> (inBits - t) & 1);
        return r;
    }

    /// <summary>Encrypts one 8-byte block under an 8-byte DES key (parity bits ignored).</summary>
    public static void EncryptBlock(ReadOnlySpan<byte> key, ReadOnlySpan<byte> input, Span<byte> output)
    {
        ulong k = System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(key);
        ulong cd = Permute(k, Pc1, 64);
        uint c = (uint)(cd >> 28) & 0x0fffffff, d = (uint)cd & 0x0fffffff;
        Span<ulong> sub = stackalloc ulong[16];
        for (int i = 0; i < 16; i++)
        {
            for (int s = 0; s < Shifts[i]; s++)
            {
                c = (c << 1 | c >> 27) & 0x0fffffff;
                d = (d << 1 | d >> 27) & 0x0fffffff;
            }
            sub[i] = Permute((ulong)c << 28 | d, Pc2, 56);
        }
        ulong block = Permute(System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(input), Ip, 64);
        uint l = (uint)(block >> 32), r = (uint)block;
        for (int i = 0; i < 16; i++)
        {
            ulong x = Permute(r, E, 32) ^ sub[i];
            uint f = 0;
            for (int b = 0; b < 8; b++)
            {
                int six = (int)(x >> (42 - 6 * b)) & 0x3f;
                int row = (six >> 4 & 2) | (six & 1), col = six >> 1 & 0xf;
                f = f << 4 | S[b, row * 16 + col];
            }
            uint next = l ^ (uint)Permute(f, P, 32);
            l = r;
            r = next;
        }
        ulong pre = (ulong)r << 32 | l;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(output, Permute(pre, Fp, 64));
    }

    /// <summary>The 16-byte response a VNC client sends for <paramref name="challenge"/> under <paramref name="password"/>
    /// (its first 8 bytes, zero-padded, bits of each byte mirrored).</summary>
    public static byte[] Response(string password, ReadOnlySpan<byte> challenge)
    {
        Span<byte> key = stackalloc byte[8];
        var pw = System.Text.Encoding.Latin1.GetBytes(password);
        for (int i = 0; i < 8 && i < pw.Length; i++)
        {
            byte b = pw[i], m = 0;
            for (int bit = 0; bit < 8; bit++) m |= (byte)((b >> bit & 1) << (7 - bit));
            key[i] = m;
        }
        var r = new byte[16];
        EncryptBlock(key, challenge[..8], r.AsSpan(0, 8));
        EncryptBlock(key, challenge.Slice(8, 8), r.AsSpan(8, 8));
        return r;
    }
}
