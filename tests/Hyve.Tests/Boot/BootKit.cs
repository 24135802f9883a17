// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Boot;
using Hyve.Devices;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Boot;

/// <summary>What a test kernel did: its COM1 output and its debug-exit status (null when it never wrote one).</summary>
public sealed record BootRun(string Text, int? ExitStatus, VmStop Stop, LoadedKernel Kernel);

/// <summary>Runs test kernels in process on a chosen CPU engine and builds the small images they are made of.</summary>
public static class BootKit
{
    /// <summary>Debug-exit port the test kernels write to.</summary>
    public const ushort ExitPort = DebugExit.DefaultIoBase;

    private sealed class Com1 : IPortDevice
    {
        public readonly StringBuilder Text = new();
        public Action<StringBuilder>? OnText;
        public uint PortRead(ushort port, int size) => port == 0x3fd ? 0x60u : 0u;
        public void PortWrite(ushort port, int size, uint value)
        {
            if (port != 0x3f8) return;
            lock (Text) { Text.Append((char)(byte)value); if (value == '\n') OnText?.Invoke(Text); }
        }
    }

    /// <summary>The path test kernels are loaded as (a Multiboot command line begins with it).</summary>
    public const string KernelPath = "/boot/kernel";

    /// <summary>Loads <paramref name="kernel"/> with the direct-boot loader and runs it on <paramref name="accel"/> ("kvm" or
    /// "soft", see <see cref="Backends"/>) until it writes debug-exit (20 s at most).</summary>
    public static BootRun Run(string accel, byte[] kernel, byte[]? initrd = null, string? cmdline = null, ulong memory = 32 << 20, string initrdName = "initrd",
        int timeoutMs = 20_000, Func<string, bool>? stopWhen = null)
    {
        using var mem = new GuestMemory(memory);
        var vm = new Vm("boot-test", new CpuTopology(1, 1, 1, 1), mem, new ManualClock());
        var com = new Com1();
        vm.Ports.Register(0x3f8, 8, com);
        int? status = null;
        new DebugExit(s => { status = s; vm.Suspend(SuspendHow.PowerOff); }).Register(vm.Ports);
        var loaded = KernelLoader.Load(mem, kernel, initrd, cmdline, kernelName: KernelPath, initrdName: initrdName);
        vm.BootState = loaded.Cpu;
        if (stopWhen is not null) com.OnText = t => { if (stopWhen(t.ToString())) vm.Suspend(SuspendHow.PowerOff); };
        using var watchdog = new Timer(_ => vm.SetError("test kernel timed out"), null, timeoutMs, Timeout.Infinite);
        var stop = vm.Run(v => Backends.Create(accel, v));
        string text;
        lock (com.Text) text = com.Text.ToString();
        return new BootRun(text, status, stop, loaded);
    }

    /// <summary>Assembles code for <paramref name="bitness"/> at <paramref name="address"/>.</summary>
    public static byte[] Assemble(int bitness, ulong address, Action<Assembler, GuestLib> code)
    {
        var a = new Assembler(bitness);
        var lib = new GuestLib(a, bitness);
        code(a, lib);
        lib.Emit();
        var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), address);
        return ms.ToArray();
    }

    /// <summary>An ELF executable with one PT_LOAD (code at <paramref name="paddr"/>, linked at <paramref name="vaddr"/>) and optional notes.</summary>
    public static byte[] Elf(bool is64, ulong vaddr, ulong paddr, byte[] code, ulong entry, ulong bss = 0, byte[]? notes = null)
    {
        int ehsize = is64 ? 64 : 52, phentsize = is64 ? 56 : 32;
        int phnum = notes is null ? 1 : 2;
        int codeOff = (ehsize + phnum * phentsize + 15) & ~15;
        int notesOff = codeOff + code.Length;
        var f = new byte[notesOff + (notes?.Length ?? 0)];
        var s = f.AsSpan();
        s[0] = 0x7f; s[1] = (byte)'E'; s[2] = (byte)'L'; s[3] = (byte)'F';
        s[4] = (byte)(is64 ? 2 : 1); s[5] = 1; s[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], (ushort)(is64 ? 62 : 3));
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(s[24..], entry);
            BinaryPrimitives.WriteUInt64LittleEndian(s[32..], (ulong)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[52..], (ushort)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[54..], (ushort)phentsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[56..], (ushort)phnum);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s[24..], (uint)entry);
            BinaryPrimitives.WriteUInt32LittleEndian(s[28..], (uint)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[40..], (ushort)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[42..], (ushort)phentsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[44..], (ushort)phnum);
        }
        WritePhdr(s[ehsize..], is64, 1, (ulong)codeOff, vaddr, paddr, (ulong)code.Length, (ulong)code.Length + bss);
        if (notes is not null) WritePhdr(s[(ehsize + phentsize)..], is64, 4, (ulong)notesOff, 0, 0, (ulong)notes.Length, (ulong)notes.Length);
        code.CopyTo(s[codeOff..]);
        notes?.CopyTo(s[notesOff..]);
        return f;
    }

    private static void WritePhdr(Span<byte> p, bool is64, uint type, ulong off, ulong vaddr, ulong paddr, ulong filesz, ulong memsz)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(p, type);
        if (is64)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(p[4..], 7);
            BinaryPrimitives.WriteUInt64LittleEndian(p[8..], off);
            BinaryPrimitives.WriteUInt64LittleEndian(p[16..], vaddr);
            BinaryPrimitives.WriteUInt64LittleEndian(p[24..], paddr);
            BinaryPrimitives.WriteUInt64LittleEndian(p[32..], filesz);
            BinaryPrimitives.WriteUInt64LittleEndian(p[40..], memsz);
            BinaryPrimitives.WriteUInt64LittleEndian(p[48..], 0x1000);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)off);
            BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)vaddr);
            BinaryPrimitives.WriteUInt32LittleEndian(p[12..], (uint)paddr);
            BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)filesz);
            BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)memsz);
            BinaryPrimitives.WriteUInt32LittleEndian(p[24..], 7);
            BinaryPrimitives.WriteUInt32LittleEndian(p[28..], 0x1000);
        }
    }

    /// <summary>An ELF note (name padded to 4, descriptor padded to 4).</summary>
    public static byte[] Note(string name, uint type, byte[] desc)
    {
        byte[] n = Encoding.ASCII.GetBytes(name + "\0");
        int nlen = (n.Length + 3) & ~3, dlen = (desc.Length + 3) & ~3;
        var b = new byte[12 + nlen + dlen];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)n.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), (uint)desc.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), type);
        n.CopyTo(b, 12);
        desc.CopyTo(b, 12 + nlen);
        return b;
    }

    /// <summary>Little-endian dwords as bytes.</summary>
    public static byte[] Dwords(params uint[] values)
    {
        var b = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(i * 4), values[i]);
        return b;
    }
}

/// <summary>
/// Subroutines for test kernels, emitted after the main code: putc (AL), puts (NUL-terminated string at xSI),
/// putn (xCX bytes at xSI), hex (xAX as 8 or 16 hex digits), and an exit sequence writing debug-exit.
/// Every routine preserves all registers but the flags (puts and putn advance xSI).
/// </summary>
public sealed class GuestLib(Assembler a, int bitness)
{
    private Label _putc = a.CreateLabel(), _puts = a.CreateLabel(), _putn = a.CreateLabel(), _hex = a.CreateLabel();

    /// <summary>Calls putc.</summary>
    public void Putc() => a.call(_putc);
    /// <summary>Calls puts.</summary>
    public void Puts() => a.call(_puts);
    /// <summary>Calls putn.</summary>
    public void Putn() => a.call(_putn);
    /// <summary>Calls hex.</summary>
    public void Hex() => a.call(_hex);

    /// <summary>Prints a constant string.</summary>
    public void Print(string text)
    {
        foreach (char c in text)
        {
            if (bitness == 64) a.mov(rax, (ulong)c); else a.mov(eax, (uint)c);
            Putc();
        }
    }

    /// <summary>Writes <paramref name="value"/> to the debug-exit port, then halts forever.</summary>
    public void Exit(uint value)
    {
        a.mov(dx, BootKit.ExitPort);
        a.mov(eax, value);
        a.@out(dx, eax);
        var l = a.CreateLabel();
        a.Label(ref l);
        a.cli();
        a.hlt();
        a.jmp(l);
    }

    internal void Emit()
    {
        if (bitness == 64) Emit64(); else Emit32();
    }

    private void Emit32()
    {
        a.Label(ref _putc);
        a.push(edx); a.push(eax);
        var wait = a.CreateLabel();
        a.Label(ref wait);
        a.mov(dx, (ushort)0x3fd); a.@in(al, dx); a.test(al, 0x20); a.jz(wait);
        a.pop(eax); a.mov(dx, (ushort)0x3f8); a.@out(dx, al); a.pop(edx);
        a.ret();

        a.Label(ref _puts);
        a.push(eax);
        var sl = a.CreateLabel(); var sd = a.CreateLabel();
        a.Label(ref sl);
        a.mov(al, __byte_ptr[esi]); a.inc(esi); a.test(al, al); a.jz(sd); a.call(_putc); a.jmp(sl);
        a.Label(ref sd);
        a.pop(eax); a.ret();

        a.Label(ref _putn);
        a.push(eax); a.push(ecx);
        var nl = a.CreateLabel(); var nd = a.CreateLabel();
        a.Label(ref nl);
        a.test(ecx, ecx); a.jz(nd); a.mov(al, __byte_ptr[esi]); a.inc(esi); a.call(_putc); a.dec(ecx); a.jmp(nl);
        a.Label(ref nd);
        a.pop(ecx); a.pop(eax); a.ret();

        a.Label(ref _hex);
        a.push(eax); a.push(ebx); a.push(ecx);
        a.mov(ebx, eax); a.mov(ecx, 8);
        var hl = a.CreateLabel(); var digit = a.CreateLabel();
        a.Label(ref hl);
        a.rol(ebx, 4); a.mov(eax, ebx); a.and(eax, 0xf); a.cmp(al, 10); a.jb(digit); a.add(al, 'a' - '0' - 10);
        a.Label(ref digit);
        a.add(al, (byte)'0'); a.call(_putc); a.dec(ecx); a.jnz(hl);
        a.pop(ecx); a.pop(ebx); a.pop(eax); a.ret();
    }

    private void Emit64()
    {
        a.Label(ref _putc);
        a.push(rdx); a.push(rax);
        var wait = a.CreateLabel();
        a.Label(ref wait);
        a.mov(dx, (ushort)0x3fd); a.@in(al, dx); a.test(al, 0x20); a.jz(wait);
        a.pop(rax); a.mov(dx, (ushort)0x3f8); a.@out(dx, al); a.pop(rdx);
        a.ret();

        a.Label(ref _puts);
        a.push(rax);
        var sl = a.CreateLabel(); var sd = a.CreateLabel();
        a.Label(ref sl);
        a.mov(al, __byte_ptr[rsi]); a.inc(rsi); a.test(al, al); a.jz(sd); a.call(_putc); a.jmp(sl);
        a.Label(ref sd);
        a.pop(rax); a.ret();

        a.Label(ref _putn);
        a.push(rax); a.push(rcx);
        var nl = a.CreateLabel(); var nd = a.CreateLabel();
        a.Label(ref nl);
        a.test(rcx, rcx); a.jz(nd); a.mov(al, __byte_ptr[rsi]); a.inc(rsi); a.call(_putc); a.dec(rcx); a.jmp(nl);
        a.Label(ref nd);
        a.pop(rcx); a.pop(rax); a.ret();

        a.Label(ref _hex);
        a.push(rax); a.push(rbx); a.push(rcx);
        a.mov(rbx, rax); a.mov(ecx, 16);
        var hl = a.CreateLabel(); var digit = a.CreateLabel();
        a.Label(ref hl);
        a.rol(rbx, 4); a.mov(rax, rbx); a.and(eax, 0xf); a.cmp(al, 10); a.jb(digit); a.add(al, 'a' - '0' - 10);
        a.Label(ref digit);
        a.add(al, (byte)'0'); a.call(_putc); a.dec(ecx); a.jnz(hl);
        a.pop(rcx); a.pop(rbx); a.pop(rax); a.ret();
    }
}
