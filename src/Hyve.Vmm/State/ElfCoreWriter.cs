// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.X86;

namespace Hyve.Vmm.State;

/// <summary>
/// Writes guest memory and vCPU state as an ELF64 core file in the layout of QEMU's dump-guest-memory (dump.c,
/// target/i386/arch_dump.c), which the crash utility and gdb read: one PT_NOTE holding, per vCPU, an NT_PRSTATUS note
/// ("CORE", struct elf_prstatus with the general registers, pr_pid = vCPU index + 1) and a QEMU CPU-state note ("QEMU",
/// type 0, QEMUCPUState version 1 with segments, descriptor tables, CR0-CR4 and KERNEL_GS_BASE); then one PT_LOAD per
/// guest-physical RAM range with p_paddr the guest-physical address. p_vaddr is the same address (QEMU writes 0 when it
/// does not walk the guest's page tables), so gdb reads guest-physical addresses from the core directly. Zero pages
/// are holes in the file.
/// </summary>
public static class ElfCoreWriter
{
    private const int EhdrSize = 64, PhdrSize = 56;
    private const int PrStatusSize = 336, QemuCpuStateSize = 440;
    private const uint NtPrStatus = 1, NtQemu = 0;

    /// <summary>Writes the core to <paramref name="path"/> (temporary name, fsync, rename).</summary>
    public static void Write(string path, GuestMemory memory, IReadOnlyList<VcpuState> cpus)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(cpus);
        var notes = new MemoryStream();
        for (int i = 0; i < cpus.Count; i++)
        {
            Note(notes, "CORE", NtPrStatus, PrStatus(cpus[i], i));
            Note(notes, "QEMU", NtQemu, QemuCpuState(cpus[i]));
        }
        var ranges = new List<GuestMapping>(memory.Mappings);
        ranges.Sort((a, b) => a.Gpa.CompareTo(b.Gpa));
        int phnum = 1 + ranges.Count;
        long noteOffset = EhdrSize + (long)PhdrSize * phnum;
        long dataOffset = (noteOffset + notes.Length + 4095) & ~4095L;

        var head = new byte[noteOffset];
        var h = head.AsSpan();
        h[0] = 0x7f; h[1] = (byte)'E'; h[2] = (byte)'L'; h[3] = (byte)'F';
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // ELFDATA2LSB
        h[6] = 1; // EV_CURRENT
        BinaryPrimitives.WriteUInt16LittleEndian(h[16..], 4);  // ET_CORE
        BinaryPrimitives.WriteUInt16LittleEndian(h[18..], 62); // EM_X86_64
        BinaryPrimitives.WriteUInt32LittleEndian(h[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(h[32..], EhdrSize); // e_phoff
        BinaryPrimitives.WriteUInt16LittleEndian(h[52..], EhdrSize);
        BinaryPrimitives.WriteUInt16LittleEndian(h[54..], PhdrSize);
        BinaryPrimitives.WriteUInt16LittleEndian(h[56..], (ushort)phnum);
        BinaryPrimitives.WriteUInt16LittleEndian(h[58..], 64); // e_shentsize (no sections)

        var p = h[EhdrSize..];
        BinaryPrimitives.WriteUInt32LittleEndian(p, 4); // PT_NOTE
        BinaryPrimitives.WriteUInt64LittleEndian(p[8..], (ulong)noteOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(p[32..], (ulong)notes.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(p[40..], (ulong)notes.Length);
        long at = dataOffset;
        var placed = new List<(GuestMapping M, long Offset)>();
        for (int i = 0; i < ranges.Count; i++)
        {
            var m = ranges[i];
            var ph = h[(EhdrSize + PhdrSize * (i + 1))..];
            BinaryPrimitives.WriteUInt32LittleEndian(ph, 1); // PT_LOAD
            uint flags = 4 | ((m.Prot & MemProt.Write) != 0 ? 2u : 0) | ((m.Prot & MemProt.Exec) != 0 ? 1u : 0);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], flags);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], (ulong)at);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], m.Gpa); // p_vaddr
            BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], m.Gpa); // p_paddr
            BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], m.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], m.Length);
            placed.Add((m, at));
            at += (long)m.Length;
        }

        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full) ?? "/";
        string tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.tmp{Native.Libc.Getpid()}");
        Microsoft.Win32.SafeHandles.SafeFileHandle? file = null;
        try
        {
            try { File.Delete(tmp); } catch (IOException) { }
            file = File.OpenHandle(tmp, FileMode.CreateNew, FileAccess.ReadWrite);
            RandomAccess.Write(file, head, 0);
            RandomAccess.Write(file, notes.ToArray(), noteOffset);
            foreach (var (m, off) in placed) SnapshotWriter.WriteRange(file, m.Segment, m.SegOffset, m.SegOffset + m.Length, off);
            RandomAccess.SetLength(file, at);
            SnapshotWriter.Sync(file, tmp);
            file.Dispose();
            file = null;
            File.Move(tmp, full, overwrite: true);
            SnapshotWriter.SyncDirectory(dir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentOutOfRangeException)
        {
            // .NET reports EFBIG (a write past RLIMIT_FSIZE, whose SIGXFSZ hyve ignores) as ArgumentOutOfRangeException.
            file?.Dispose();
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw new IOException($"{full}: {SnapshotWriter.WriteError(e)}", e);
        }
    }

    private static void Note(MemoryStream s, string name, uint type, byte[] desc)
    {
        var n = Encoding.ASCII.GetBytes(name + "\0");
        Span<byte> hdr = stackalloc byte[12];
        BinaryPrimitives.WriteUInt32LittleEndian(hdr, (uint)n.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(hdr[4..], (uint)desc.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(hdr[8..], type);
        s.Write(hdr);
        s.Write(n);
        Pad(s);
        s.Write(desc);
        Pad(s);
    }

    private static void Pad(MemoryStream s)
    {
        while ((s.Length & 3) != 0) s.WriteByte(0);
    }

    /// <summary>struct elf_prstatus (x86_64): the general registers in user_regs_struct order at offset 112.</summary>
    public static byte[] PrStatus(VcpuState s, int index)
    {
        var b = new byte[PrStatusSize];
        var c = s.Cpu;
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(32), index + 1); // pr_pid
        ulong G(Reg r) => c.Gpr[(int)r];
        ulong[] regs =
        [
            G(Reg.R15), G(Reg.R14), G(Reg.R13), G(Reg.R12), G(Reg.Rbp), G(Reg.Rbx), G(Reg.R11), G(Reg.R10), G(Reg.R9), G(Reg.R8),
            G(Reg.Rax), G(Reg.Rcx), G(Reg.Rdx), G(Reg.Rsi), G(Reg.Rdi), G(Reg.Rax) /* orig_rax */, c.Rip,
            c.Segs[(int)Seg.Cs].Selector, c.Rflags, G(Reg.Rsp), c.Segs[(int)Seg.Ss].Selector,
            c.Segs[(int)Seg.Fs].Descriptor.Base, c.Segs[(int)Seg.Gs].Descriptor.Base,
            c.Segs[(int)Seg.Ds].Selector, c.Segs[(int)Seg.Es].Selector, c.Segs[(int)Seg.Fs].Selector, c.Segs[(int)Seg.Gs].Selector,
        ];
        for (int i = 0; i < regs.Length; i++) BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(112 + 8 * i), regs[i]);
        return b;
    }

    /// <summary>QEMU's QEMUCPUState, version 1 with kernel_gs_base (440 bytes).</summary>
    public static byte[] QemuCpuState(VcpuState s)
    {
        var b = new byte[QemuCpuStateSize];
        var c = s.Cpu;
        var w = b.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(w, 1);
        BinaryPrimitives.WriteUInt32LittleEndian(w[4..], QemuCpuStateSize);
        int at = 8;
        void U64(ulong v) { BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(at), v); at += 8; }
        void Segment(ushort selector, SegmentDescriptor d, bool table)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(at), selector);
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(at + 4), d.Limit);
            // QEMU keeps the descriptor's high-dword flag layout: Hyve's access rights shifted up by 8.
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(at + 8), table ? 0 : (d.Access & 0xF0FF) << 8);
            BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(at + 16), d.Base);
            at += 24;
        }
        ulong G(Reg r) => c.Gpr[(int)r];
        foreach (var r in new[] { Reg.Rax, Reg.Rbx, Reg.Rcx, Reg.Rdx, Reg.Rsi, Reg.Rdi, Reg.Rsp, Reg.Rbp,
                     Reg.R8, Reg.R9, Reg.R10, Reg.R11, Reg.R12, Reg.R13, Reg.R14, Reg.R15 }) U64(G(r));
        U64(c.Rip);
        U64(c.Rflags);
        foreach (var sg in new[] { Seg.Cs, Seg.Ds, Seg.Es, Seg.Fs, Seg.Gs, Seg.Ss }) Segment(c.Segs[(int)sg].Selector, c.Segs[(int)sg].Descriptor, false);
        Segment(c.Ldtr.Selector, c.Ldtr.Descriptor, false);
        Segment(c.Tr.Selector, c.Tr.Descriptor, false);
        Segment(0, c.Gdtr, true);
        Segment(0, c.Idtr, true);
        U64(c.Cr0); U64(c.Cr2); U64(c.Cr3); U64(c.Cr4); U64(c.Cr8);
        U64(c.KernelGsBase);
        return b;
    }
}
