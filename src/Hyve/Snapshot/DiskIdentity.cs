// SPDX-License-Identifier: BSD-2-Clause
using System.Security.Cryptography;
using Hyve.Vmm.State;

namespace Hyve.Snapshot;

/// <summary>
/// What a snapshot records of each disk so that a restore refuses a disk that is not the one the guest was using: its
/// size and a SHA-256 over sampled blocks (the first and last 64 KiB, where partition tables, file system superblocks and
/// their backups live, and 32 blocks of 4 KiB spread evenly between them, about 256 KiB in all).
/// <para>
/// Not the file's identity (st_dev, st_ino, mtime): copying an image (cp, rsync, another host) changes all three, and a
/// restore from an identical copy must work. Not a hash of the whole disk: that reads gigabytes at every checkpoint and
/// restore. So a different image, a resized one, and changes to the sampled blocks (a file system mounted and written
/// elsewhere updates its superblock) are refused; a write since the checkpoint that touches none of the sampled
/// blocks is not detected.
/// </para>
/// </summary>
public static class DiskIdentity
{
    private const int Edge = 64 * 1024, Block = 4096, Samples = 32;

    /// <summary>The identity of the disk at <paramref name="path"/> for device <paramref name="device"/>; its size is the
    /// one the device uses (a block device's size is not its file length).</summary>
    public static DiskEntry Compute(string device, string path, long size)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<byte> sz = stackalloc byte[8];
        BitConverter.TryWriteBytes(sz, size);
        sha.AppendData(sz);
        try
        {
            using var f = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
            var buf = new byte[Edge];
            void Take(long offset, int length)
            {
                if (offset < 0 || offset >= size) return;
                length = (int)Math.Min(length, size - offset);
                int got = RandomAccess.Read(f, buf.AsSpan(0, length), offset);
                sha.AppendData(buf.AsSpan(0, got));
            }
            Take(0, Edge);
            long span = size - 2L * Edge;
            for (int i = 0; i < Samples && span > 0; i++) Take(Edge + span / Samples * i / Block * Block, Block);
            Take(Math.Max(Edge, size - Edge), Edge);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new HostConfigException($"disk {device} ({path}): cannot read it to record its identity: {e.Message}");
        }
        return new DiskEntry(device, path, size, Convert.ToHexStringLower(sha.GetHashAndReset()));
    }

    /// <summary>Null when <paramref name="now"/> is the disk <paramref name="then"/> describes, else why not (one phrase).</summary>
    public static string? Differs(DiskEntry then, DiskEntry now)
    {
        ArgumentNullException.ThrowIfNull(then);
        ArgumentNullException.ThrowIfNull(now);
        if (then.Size != now.Size) return $"its size is {now.Size} bytes, the snapshot's disk had {then.Size}";
        if (then.Sample != now.Sample) return "its contents differ from the snapshot's disk (sampled blocks)";
        return null;
    }
}
