// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Display;
using Hyve.Kvm;
using Hyve.Soft;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.Vnc;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Vnc;

/// <summary>
/// The framebuffer's dirty-page log: what the software CPU marks (and marks again after a harvest, through the TLB
/// invalidation the harvest causes), the KVM glue (KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG and its bitmap), and the
/// display source reading only lines on marked pages and going quiet when nothing is written.
/// </summary>
public unsafe class DirtyLogTests
{
    private const ulong FbGpa = 0xD000_0000;

    [Fact]
    public void MarksHarvestsArmsAndPokes()
    {
        using var mem = new GuestMemory(16 << 20);
        var fb = mem.CreateDevMem("framebuffer", 1 << 20);
        var map = mem.Map(fb, 0, FbGpa, 1 << 20, MemProt.All);
        var log = mem.EnableDirtyLog(fb);
        int harvested = 0, dirtied = 0;
        mem.DirtyHarvested += () => harvested++;
        log.Dirtied += () => dirtied++;
        var bits = new ulong[log.Words];
        Assert.Equal(4, log.Words); // 256 pages
        Assert.False(log.Harvest(bits));
        Assert.Equal(0, harvested); // nothing found: software TLBs keep their entries
        mem.MarkDirty(FbGpa + 0x1ffc, 8); // straddles pages 1 and 2
        mem.MarkDirty(FbGpa + 0xff000, 4096);
        mem.MarkDirty(0x1000, 4096); // system memory has no log
        Assert.True(log.Harvest(bits));
        Assert.Equal([0b110ul, 0, 0, 1ul << 63], bits);
        Assert.Equal(1, harvested);
        Assert.False(log.Harvest(bits));
        // Armed: the first mark wakes once; later marks do not.
        Assert.True(log.Arm());
        mem.MarkDirty(FbGpa, 1);
        mem.MarkDirty(FbGpa + 0x3000, 1);
        Assert.Equal(1, dirtied);
        Assert.False(log.Arm()); // pages are marked: harvest rather than sleep
        log.Harvest(bits);
        Assert.True(log.Arm());
        log.Poke();
        log.Poke();
        Assert.Equal(2, dirtied);
        // After a BAR move the same segment pages are marked at the new address.
        mem.Move(map, 0xE000_0000);
        mem.MarkDirty(0xE000_2000, 1);
        log.Harvest(bits);
        Assert.Equal(0b100ul, bits[0]);
    }

    [Fact]
    public void TheSoftwareCpuMarksWrittenPagesAgainAfterEachHarvest()
    {
        using var clock = new TimerQueue();
        using var mem = new GuestMemory(16 << 20);
        var fb = mem.CreateDevMem("framebuffer", 1 << 20);
        mem.Map(fb, 0, FbGpa, 1 << 20, MemProt.All);
        var log = mem.EnableDirtyLog(fb);
        var vm = new Hyve.Vmm.Vm("t", new CpuTopology(1, 1, 1, 1), mem, clock);
        string path = GuestRom.ToFile(GuestRom.ProtectedMode32(a =>
        {
            // Paging on (identity, 4 MiB pages already Accessed and Dirty), so a store hits the TLB without a walk.
            a.mov(edi, 0x10000);
            a.mov(eax, 0xe3);
            a.mov(ecx, 1024);
            var fill = a.CreateLabel();
            a.Label(ref fill);
            a.mov(__dword_ptr[edi], eax);
            a.add(eax, 0x400000);
            a.add(edi, 4);
            a.dec(ecx);
            a.jnz(fill);
            a.mov(eax, cr4);
            a.or(eax, 0x10);
            a.mov(cr4, eax);
            a.mov(eax, 0x10000);
            a.mov(cr3, eax);
            a.mov(eax, cr0);
            a.or(eax, unchecked((int)0x80000000));
            a.mov(cr0, eax);
            a.mov(__dword_ptr[(uint)FbGpa + 0x10], 1);    // page 0
            // The flags live in page 2: the TLB is direct-mapped by linear page, and page 0 would share the framebuffer
            // page's slot (0xD0000 % 512 == 0) and evict it.
            a.mov(__dword_ptr[0x2600], 1);                // first phase done
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.cmp(__dword_ptr[0x2604], 0);
            a.je(wait);
            a.mov(__dword_ptr[(uint)FbGpa + 0x20], 2);    // page 0 again: its TLB entry survives unless the harvest dropped it
            a.mov(__dword_ptr[(uint)FbGpa + 0x5000], 3);  // page 5
            a.cli();
            a.hlt();
        }));
        try
        {
            BootRom.Load(mem, path, null);
            VmStop? stop = null;
            var t = new Thread(() => stop = vm.Run(v => new SoftBackend(v)));
            t.Start();
            Assert.True(mem.TryGetSpan(0, 0x3000, MemProt.Write, out var low));
            nint lowAddr = (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref low[0]);
            var sw = System.Diagnostics.Stopwatch.StartNew();
            while (Volatile.Read(ref *(int*)(lowAddr + 0x2600)) == 0 && sw.ElapsedMilliseconds < 20000) Thread.Sleep(1);
            var bits = new ulong[log.Words];
            Assert.True(log.Harvest(bits));
            Assert.Equal(1ul, bits[0]);              // page 0 only: the loop reads system memory
            Thread.Sleep(50);
            Assert.False(log.Harvest(bits));         // the guest only spins: nothing written, nothing to read
            Volatile.Write(ref *(int*)(lowAddr + 0x2604), 1);
            Assert.True(t.Join(20000));
            Assert.Null(stop!.Value.Error);
            Assert.True(log.Harvest(bits));
            Assert.Equal(1ul | 1ul << 5, bits[0]);
            Assert.Equal(2u, BitConverter.ToUInt32(fb.Slice(0x20, 4)));
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void KvmGlueMatchesLinux()
    {
        // _IOW(KVMIO, 0x42, struct kvm_dirty_log): 16 bytes (slot, padding, bitmap pointer).
        Assert.Equal((nuint)0x4010_AE42, KvmApi.GetDirtyLog);
        Assert.Equal(16, sizeof(KvmDirtyLogArgs));
        Assert.Equal(8, (int)Marshal.OffsetOf<KvmDirtyLogArgs>(nameof(KvmDirtyLogArgs.DirtyBitmap)));
        Assert.Equal(1u, KvmApi.MemLogDirtyPages);
        Assert.Equal(1u, KvmBackend.SlotFlags(MemProt.All, logDirty: true));
        Assert.Equal(0u, KvmBackend.SlotFlags(MemProt.All, logDirty: false));
        Assert.Equal(2u, KvmBackend.SlotFlags(MemProt.Read, logDirty: true)); // ROM is read-only and never dirty
        // A slot mapping segment pages 3.. (a mapping at an offset into the segment): slot page N is segment page 3 + N;
        // bits past the slot's pages are ignored.
        var seg = new ulong[2];
        KvmBackend.MergeSlotBitmap([1ul | 1ul << 62, 1ul << 1], 3, 66, seg);
        Assert.Equal([1ul << 3, 1ul << 1 | 1ul << 4], seg);
        KvmBackend.MergeSlotBitmap([0, 1ul << 3], 3, 66, seg); // slot page 67 is past the slot
        Assert.Equal([1ul << 3, 1ul << 1 | 1ul << 4], seg);
    }

    /// <summary>A 32-bpp surface whose memory is a devmem segment with a dirty log (the standard VGA's arrangement).</summary>
    private sealed class LoggedSurface : IDisplaySurface
    {
        public readonly GuestMemory Mem = new(16 << 20);
        public readonly MemSegment Fb;
        public DisplayMode Current;
        private int _gen = 1;
        public LoggedSurface(int w, int h)
        {
            Fb = Mem.CreateDevMem("framebuffer", 4 << 20);
            Mem.Map(Fb, 0, FbGpa, 4 << 20, MemProt.All);
            Dirty = Mem.EnableDirtyLog(Fb);
            Current = new DisplayMode(true, w, h, 32, w * 4, 0, false);
        }
        public DisplayMode Mode => Current;
        public int ModeGeneration => _gen;
        public ReadOnlySpan<byte> Memory => Fb.Span;
        public void CopyPalette(Span<uint> palette) { }
        public Hyve.Vmm.DirtyLog? Dirty { get; }
        public void ModeChanged() => _gen++;
        public void Put(int x, int y, uint rgb, bool mark)
        {
            ulong off = (ulong)(y * Current.Stride + x * 4);
            BitConverter.TryWriteBytes(Fb.Slice(off, 4), rgb);
            if (mark) Mem.MarkDirty(FbGpa + off, 4);
        }
    }

    [Fact]
    public void TheSourceReadsOnlyLinesOnWrittenPagesAndGoesQuiet()
    {
        var s = new LoggedSurface(640, 480);
        var src = new FrameSource(s, 640, 480);
        src.Tick(); // the first look compares everything
        Assert.False(src.Tick());
        Assert.True(src.Quiet);
        // A write the log did not see is not looked for (this is what makes an idle screen free)...
        s.Put(10, 100, 0xff0000, mark: false);
        Assert.False(src.Tick());
        // ...a marked one is, and the tile it is in changes generation.
        s.Put(600, 300, 0x00ff00, mark: true);
        long g = src.Generation;
        Assert.True(src.Tick());
        Assert.False(src.Quiet);
        Assert.Equal(0x00ff00u, src.Pixels[300 * 640 + 600] & 0xffffff);
        Assert.Equal(0u, src.Pixels[100 * 640 + 10] & 0xffffff);
        Assert.Equal(g + 1, src.TileGenerations[(300 / 64) * src.TilesX + 600 / 64]);
        // The page written last time is looked at once more, then the source is quiet again.
        Assert.False(src.Tick());
        Assert.False(src.Quiet);
        Assert.False(src.Tick());
        Assert.True(src.Quiet);
        // A mode change compares everything again (the unseen write shows up).
        s.ModeChanged();
        Assert.True(src.Tick());
        Assert.Equal(0xff0000u, src.Pixels[100 * 640 + 10] & 0xffffff);
    }
}
