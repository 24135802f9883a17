// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Numerics;

namespace Hyve.Vmm.State;

/// <summary>CRC-32C (Castagnoli), the checksum of snapshot headers, manifests and sections (SSE4.2's CRC32 where the
/// host has it).</summary>
public static class Crc32C
{
    /// <summary>The CRC-32C of <paramref name="data"/>.</summary>
    public static uint Compute(ReadOnlySpan<byte> data) => ~Append(~0u, data);

    /// <summary>Continues a running (uninverted) CRC over <paramref name="data"/>.</summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        int i = 0;
        for (; i + 8 <= data.Length; i += 8) crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data[i..]));
        for (; i < data.Length; i++) crc = BitOperations.Crc32C(crc, data[i]);
        return crc;
    }
}
