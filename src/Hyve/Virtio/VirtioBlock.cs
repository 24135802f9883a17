// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Hyve.Pci;

namespace Hyve.Virtio;

/// <summary>
/// virtio-blk (virtio 1.2 section 5.2; bhyve's pci_virtio_block.c with its block_if options):
/// <c>-s N,virtio-blk,PATH[,ro][,nocache][,direct][,sectorsize=L[/P]][,ser=ID][,nodelete]</c> over a raw image file or
/// a block device. Requests: READ and WRITE through preadv(2)/pwritev(2) straight between the file and guest memory,
/// FLUSH that completes only after fdatasync(2) returned, GET_ID, DISCARD (a punched hole, or BLKDISCARD on a block
/// device; <c>nodelete</c> withholds it) and WRITE_ZEROES (punched or zeroed ranges, BLKZEROOUT). <c>ro</c> offers
/// VIRTIO_BLK_F_RO and fails writes with IOERR; <c>nocache</c> opens with O_DIRECT (misaligned guest buffers go through
/// an aligned bounce buffer), <c>direct</c> with O_SYNC. Requests are served in order on the device's I/O thread.
/// </summary>
public sealed unsafe class VirtioBlock : VirtioPciDevice
{
    /// <summary>Virtio device type 2.</summary>
    public const int Type = 2;
    /// <summary>VIRTIO_BLK_T_IN.</summary>
    public const uint TypeIn = 0;
    /// <summary>VIRTIO_BLK_T_OUT.</summary>
    public const uint TypeOut = 1;
    /// <summary>VIRTIO_BLK_T_FLUSH.</summary>
    public const uint TypeFlush = 4;
    /// <summary>VIRTIO_BLK_T_GET_ID.</summary>
    public const uint TypeGetId = 8;
    /// <summary>VIRTIO_BLK_T_DISCARD.</summary>
    public const uint TypeDiscard = 11;
    /// <summary>VIRTIO_BLK_T_WRITE_ZEROES.</summary>
    public const uint TypeWriteZeroes = 13;
    /// <summary>VIRTIO_BLK_S_OK.</summary>
    public const byte StatusOk = 0;
    /// <summary>VIRTIO_BLK_S_IOERR.</summary>
    public const byte StatusIoErr = 1;
    /// <summary>VIRTIO_BLK_S_UNSUPP.</summary>
    public const byte StatusUnsupported = 2;
    /// <summary>VIRTIO_BLK_F_SEG_MAX.</summary>
    public const ulong FeatureSegMax = 1ul << 2;
    /// <summary>VIRTIO_BLK_F_RO.</summary>
    public const ulong FeatureRo = 1ul << 5;
    /// <summary>VIRTIO_BLK_F_BLK_SIZE.</summary>
    public const ulong FeatureBlkSize = 1ul << 6;
    /// <summary>VIRTIO_BLK_F_FLUSH.</summary>
    public const ulong FeatureFlush = 1ul << 9;
    /// <summary>VIRTIO_BLK_F_TOPOLOGY.</summary>
    public const ulong FeatureTopology = 1ul << 10;
    /// <summary>VIRTIO_BLK_F_DISCARD.</summary>
    public const ulong FeatureDiscard = 1ul << 13;
    /// <summary>VIRTIO_BLK_F_WRITE_ZEROES.</summary>
    public const ulong FeatureWriteZeroes = 1ul << 14;
    /// <summary>Entries per queue.</summary>
    public const ushort QueueSize = 256;
    private const int BlkConfigSize = 60;
    private const int MaxRangeSegments = 32;
    private const uint MaxRangeSectors = 0x3fff_ffff;
    private const int EINTR = 4, EINVAL = 22;

    private readonly int _fd;
    private readonly bool _blockDevice;
    private readonly bool _direct;
    private readonly IoVec* _iov;
    private readonly byte[] _serial = new byte[20];
    private byte* _bounce;
    private nuint _bounceSize;

    private VirtioBlock(PciDeviceContext ctx, BlockOptions o, int fd, long size, bool blockDevice)
        : base(ctx, Type, 0x1001, 0x01, 0x00, queues: 1, queueSize: QueueSize,
            deviceFeatures: FeatureSegMax | FeatureBlkSize | FeatureFlush | FeatureTopology | FeatureWriteZeroes
                | (o.ReadOnly ? FeatureRo : 0) | (o.NoDelete ? 0 : FeatureDiscard),
            configSize: BlkConfigSize)
    {
        _fd = fd;
        _blockDevice = blockDevice;
        _direct = o.NoCache;
        ReadOnly = o.ReadOnly;
        DiskPath = o.Path;
        SizeBytes = size;
        LogicalSectorSize = o.Logical;
        System.Text.Encoding.ASCII.GetBytes(o.Serial, _serial);
        _iov = (IoVec*)NativeMemory.Alloc((nuint)(sizeof(IoVec) * (QueueSize + 1)));

        var c = DeviceConfig.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(c, (ulong)size / 512);           // capacity, 512-byte sectors
        BinaryPrimitives.WriteUInt32LittleEndian(c[12..], QueueSize - 2);         // seg_max: a header and a status element
        BinaryPrimitives.WriteUInt32LittleEndian(c[20..], (uint)o.Logical);       // blk_size
        c[24] = (byte)System.Numerics.BitOperations.Log2((uint)(o.Physical / o.Logical)); // physical_block_exp
        BinaryPrimitives.WriteUInt16LittleEndian(c[26..], 1);                     // min_io_size (logical blocks)
        BinaryPrimitives.WriteUInt32LittleEndian(c[36..], MaxRangeSectors);       // max_discard_sectors
        BinaryPrimitives.WriteUInt32LittleEndian(c[40..], MaxRangeSegments);      // max_discard_seg
        BinaryPrimitives.WriteUInt32LittleEndian(c[44..], (uint)(o.Logical / 512)); // discard_sector_alignment
        BinaryPrimitives.WriteUInt32LittleEndian(c[48..], MaxRangeSectors);       // max_write_zeroes_sectors
        BinaryPrimitives.WriteUInt32LittleEndian(c[52..], MaxRangeSegments);      // max_write_zeroes_seg
        c[56] = 1;                                                                 // write_zeroes_may_unmap
        StartIo();
    }

    /// <summary>True for <c>ro</c>.</summary>
    public bool ReadOnly { get; }
    /// <summary>The disk's path (an image file or a block device).</summary>
    public string DiskPath { get; }
    /// <summary>Disk size in bytes.</summary>
    public long SizeBytes { get; }
    /// <summary>Logical sector size the guest is told.</summary>
    public int LogicalSectorSize { get; }

    /// <summary>What the conf keys ask for.</summary>
    private sealed record BlockOptions(string Path, bool ReadOnly, bool NoCache, bool Direct, int Logical, int Physical, string Serial, bool NoDelete);

    /// <summary>Factory for <c>virtio-blk</c>: a missing or unreadable disk, or a bad option, is a host error.</summary>
    public static PciDevice Create(PciDeviceContext ctx)
    {
        var o = ParseOptions(ctx);
        int flags = (o.ReadOnly ? VirtioNative.ORdOnly : VirtioNative.ORdWr) | VirtioNative.CloExec
            | (o.NoCache ? VirtioNative.ODirect : 0) | (o.Direct ? VirtioNative.OSync : 0);
        int fd = VirtioNative.Open(o.Path, flags, 0);
        if (fd < 0) throw new HostConfigException($"{ctx.Where} virtio-blk: cannot open {o.Path}: {VirtioNative.LastError()}");
        try
        {
            long size = VirtioNative.Lseek(fd, 0, 2);
            if (size < 0) throw new HostConfigException($"{ctx.Where} virtio-blk: {o.Path}: {VirtioNative.LastError()}");
            // BLKSSZGET answers only for a block device: that is how one is told from a file.
            int l = 0, p = 0;
            bool blockDevice = VirtioNative.Ioctl(fd, VirtioNative.BlkSszGet, &l) == 0;
            if (blockDevice && ctx.Get("sectorsize") is null && l >= 512)
            {
                o = o with { Logical = l, Physical = l };
                if (VirtioNative.Ioctl(fd, VirtioNative.BlkPbszGet, &p) == 0 && p >= l) o = o with { Physical = p };
            }
            return new VirtioBlock(ctx, o, fd, size, blockDevice);
        }
        catch
        {
            VirtioNative.Close(fd);
            throw;
        }
    }

    private static BlockOptions ParseOptions(PciDeviceContext ctx)
    {
        string path = ctx.Get("path") ?? throw new HostConfigException($"{ctx.Where} virtio-blk: no disk path (-s N,virtio-blk,PATH)");
        int logical = 512, physical = 512;
        if (ctx.Get("sectorsize") is string ss)
        {
            var parts = ss.Split('/');
            if (parts.Length > 2 || !SectorSize(parts[0], out logical) || !SectorSize(parts.Length == 2 ? parts[1] : parts[0], out physical) || physical < logical)
                throw new HostConfigException($"{ctx.Where} virtio-blk: sectorsize={ss}: want L[/P], powers of two from 512 to 32768 with P >= L");
        }
        string serial = ctx.Get("ser") ?? DefaultSerial(path);
        if (serial.Length > 20 || !System.Text.Ascii.IsValid(serial))
            throw new HostConfigException($"{ctx.Where} virtio-blk: ser={serial}: at most 20 ASCII characters");
        return new BlockOptions(path, ctx.GetBool("ro", false), ctx.GetBool("nocache", false), ctx.GetBool("direct", false),
            logical, physical, serial, ctx.GetBool("nodelete", false));
    }

    private static bool SectorSize(string s, out int v) =>
        int.TryParse(s, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out v)
        && v >= 512 && v <= 32768 && (v & (v - 1)) == 0;

    // bhyve derives "BHYVE-XXXX-XXXX-XXXX" from an MD5 of the path; this is the same shape from an FNV-1a hash.
    private static string DefaultSerial(string path)
    {
        ulong h = 0xcbf29ce484222325ul;
        foreach (char ch in path) h = (h ^ ch) * 0x100000001b3ul;
        return $"HYVE-{(ushort)h:X4}-{(ushort)(h >> 16):X4}-{(ushort)(h >> 32):X4}";
    }

    /// <inheritdoc/>
    protected override uint HandleChain(Virtqueue queue, DescriptorChain chain)
    {
        Span<byte> hdr = stackalloc byte[16];
        if (chain.ReadableBytes < 16 || chain.WritableBytes < 1 || chain.ReadReadable(0, hdr) != 16)
        {
            queue.MarkBroken("block request without its header or status byte");
            return 0;
        }
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(hdr);
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(hdr[8..]);
        long dataIn = chain.WritableBytes - 1;   // bytes the device may write before the status byte
        long dataOut = chain.ReadableBytes - 16; // bytes after the header
        uint written = 1;
        byte status;
        switch (type)
        {
            case TypeIn:
                status = Transfer(chain, write: false, sector, dataIn);
                if (status == StatusOk) written += (uint)dataIn;
                break;
            case TypeOut:
                status = ReadOnly ? StatusIoErr : Transfer(chain, write: true, sector, dataOut);
                break;
            case TypeFlush:
                status = VirtioNative.Fdatasync(_fd) == 0 ? StatusOk : StatusIoErr;
                break;
            case TypeGetId:
                int n = (int)Math.Min(dataIn, 20);
                written += (uint)chain.WriteWritable(0, _serial.AsSpan(0, n));
                status = StatusOk;
                break;
            case TypeDiscard when (DriverFeatures & FeatureDiscard) != 0:
            case TypeWriteZeroes when (DriverFeatures & FeatureWriteZeroes) != 0:
                status = ReadOnly ? StatusIoErr : Ranges(chain, type == TypeDiscard, dataOut);
                break;
            default:
                status = StatusUnsupported;
                break;
        }
        Span<byte> st = [status];
        chain.WriteWritable(chain.WritableBytes - 1, st);
        return written;
    }

    // Checks the range (multiple of 512 bytes, inside the disk) and moves the bytes in one vectored call (more on a short one).
    private byte Transfer(DescriptorChain chain, bool write, ulong sector, long length)
    {
        if (length < 0 || (length & 511) != 0) return StatusIoErr;
        if (length == 0) return StatusOk;
        if (sector > (ulong)SizeBytes / 512 || (long)sector * 512 > SizeBytes - length) return StatusIoErr;
        long offset = (long)sector * 512;
        if ((offset & (LogicalSectorSize - 1)) != 0 || (length & (LogicalSectorSize - 1)) != 0) return StatusIoErr;
        int count = BuildIoVecs(chain, write, length);
        if (count < 0) return StatusIoErr;
        return Move(write, count, offset, length) ? StatusOk : StatusIoErr;
    }

    // The data part of the chain as iovecs: for a write the readable bytes after the 16-byte header, for a read the
    // writable bytes before the status byte.
    private int BuildIoVecs(DescriptorChain chain, bool write, long length)
    {
        int first = write ? 0 : chain.FirstWritable, end = write ? chain.FirstWritable : chain.Count;
        long skip = write ? 16 : 0;
        int count = 0;
        for (int i = first; i < end && length > 0; i++)
        {
            long len = chain.Length(i);
            if (skip >= len) { skip -= len; continue; }
            if (!chain.TryGetSpan(i, out var span)) return -1;
            long take = Math.Min(len - skip, length);
            _iov[count].Base = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(span)) + (nint)skip;
            _iov[count].Length = (nuint)take;
            count++;
            length -= take;
            skip = 0;
        }
        return length == 0 ? count : -1;
    }

    private bool Move(bool write, int count, long offset, long length)
    {
        IoVec* iov = _iov;
        while (length > 0)
        {
            nint n = write ? VirtioNative.Pwritev(_fd, iov, count, offset) : VirtioNative.Preadv(_fd, iov, count, offset);
            if (n < 0)
            {
                int err = Marshal.GetLastPInvokeError();
                if (err == EINTR) continue;
                if (err == EINVAL && _direct) return Bounced(write, iov, count, offset, length);
                return false;
            }
            if (n == 0)
            {
                if (write) return false;
                // Past the end of a file that shrank under us: the rest reads as zeros.
                for (int i = 0; i < count; i++) new Span<byte>((void*)iov[i].Base, (int)iov[i].Length).Clear();
                return true;
            }
            offset += n;
            length -= n;
            while (n > 0 && count > 0)
            {
                if ((nuint)n >= iov->Length) { n -= (nint)iov->Length; iov++; count--; }
                else { iov->Base += n; iov->Length -= (nuint)n; n = 0; }
            }
        }
        return true;
    }

    // O_DIRECT refuses buffers that are not sector aligned: copy through an aligned buffer instead.
    private bool Bounced(bool write, IoVec* iov, int count, long offset, long length)
    {
        if ((nuint)length > _bounceSize)
        {
            if (_bounce is not null) NativeMemory.AlignedFree(_bounce);
            _bounceSize = (nuint)((length + 4095) & ~4095L);
            _bounce = (byte*)NativeMemory.AlignedAlloc(_bounceSize, 4096);
        }
        var one = new IoVec { Base = (nint)_bounce, Length = (nuint)length };
        if (write)
        {
            long at = 0;
            for (int i = 0; i < count; i++) { Buffer.MemoryCopy((void*)iov[i].Base, _bounce + at, (long)iov[i].Length, (long)iov[i].Length); at += (long)iov[i].Length; }
        }
        long done = 0;
        while (done < length)
        {
            var v = new IoVec { Base = one.Base + (nint)done, Length = (nuint)(length - done) };
            nint n = write ? VirtioNative.Pwritev(_fd, &v, 1, offset + done) : VirtioNative.Preadv(_fd, &v, 1, offset + done);
            if (n < 0 && Marshal.GetLastPInvokeError() == EINTR) continue;
            if (n <= 0) { if (!write && n == 0) { new Span<byte>(_bounce + done, (int)(length - done)).Clear(); break; } return false; }
            done += n;
        }
        if (!write)
        {
            long at = 0;
            for (int i = 0; i < count; i++) { Buffer.MemoryCopy(_bounce + at, (void*)iov[i].Base, (long)iov[i].Length, (long)iov[i].Length); at += (long)iov[i].Length; }
        }
        return true;
    }

    // DISCARD and WRITE_ZEROES: a list of {sector, num_sectors, flags} segments after the header.
    private byte Ranges(DescriptorChain chain, bool discard, long bytes)
    {
        if (bytes <= 0 || bytes % 16 != 0 || bytes / 16 > MaxRangeSegments) return StatusIoErr;
        Span<byte> seg = stackalloc byte[16];
        for (long at = 16; at < 16 + bytes; at += 16)
        {
            if (chain.ReadReadable(at, seg) != 16) return StatusIoErr;
            ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(seg);
            uint num = BinaryPrimitives.ReadUInt32LittleEndian(seg[8..]);
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(seg[12..]);
            if ((flags & ~1u) != 0 || (discard && flags != 0)) return StatusUnsupported;
            if (num > MaxRangeSectors || sector > (ulong)SizeBytes / 512 || (long)sector * 512 > SizeBytes - (long)num * 512) return StatusIoErr;
            long off = (long)sector * 512, len = (long)num * 512;
            if (len == 0) continue;
            if (!(discard ? Discard(off, len) : Zero(off, len, unmap: (flags & 1) != 0))) return StatusIoErr;
        }
        return StatusOk;
    }

    private bool Discard(long offset, long length)
    {
        if (_blockDevice)
        {
            ulong* range = stackalloc ulong[2] { (ulong)offset, (ulong)length };
            VirtioNative.Ioctl(_fd, VirtioNative.BlkDiscard, range);
            return true; // discard is a hint: a device that cannot discard has done nothing wrong
        }
        VirtioNative.Fallocate(_fd, VirtioNative.FallocPunchHole | VirtioNative.FallocKeepSize, offset, length);
        return true;
    }

    private bool Zero(long offset, long length, bool unmap)
    {
        if (_blockDevice)
        {
            ulong* range = stackalloc ulong[2] { (ulong)offset, (ulong)length };
            if (VirtioNative.Ioctl(_fd, VirtioNative.BlkZeroOut, range) == 0) return true;
        }
        else
        {
            // A punched hole reads as zeros; without unmap the blocks stay allocated (ZERO_RANGE).
            int mode = unmap ? VirtioNative.FallocPunchHole | VirtioNative.FallocKeepSize : VirtioNative.FallocZeroRange | VirtioNative.FallocKeepSize;
            if (VirtioNative.Fallocate(_fd, mode, offset, length) == 0) return true;
        }
        // The file system can do neither: write zeros.
        const int Chunk = 64 * 1024;
        byte* zeros = (byte*)NativeMemory.AlignedAlloc(Chunk, 4096);
        try
        {
            new Span<byte>(zeros, Chunk).Clear();
            while (length > 0)
            {
                var v = new IoVec { Base = (nint)zeros, Length = (nuint)Math.Min(length, Chunk) };
                nint n = VirtioNative.Pwritev(_fd, &v, 1, offset);
                if (n < 0 && Marshal.GetLastPInvokeError() == EINTR) continue;
                if (n <= 0) return false;
                offset += n;
                length -= n;
            }
            return true;
        }
        finally { NativeMemory.AlignedFree(zeros); }
    }

    /// <inheritdoc/>
    protected override void OnQuiesce() => VirtioNative.Fdatasync(_fd); // what the guest wrote is on disk with the snapshot

    /// <inheritdoc/>
    public override void Dispose()
    {
        base.Dispose();
        VirtioNative.Close(_fd);
        NativeMemory.Free(_iov);
        if (_bounce is not null) NativeMemory.AlignedFree(_bounce);
        _bounce = null;
    }
}
