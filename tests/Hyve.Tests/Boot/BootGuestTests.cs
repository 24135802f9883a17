// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using System.Text;
using Hyve.Boot;
using Hyve.Vmm;
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Boot;

/// <summary>Test kernels in every supported format, booted on each CPU engine, reporting what they were handed on COM1.</summary>
public class BootGuestTests
{
    private const uint Pass = 0x21, Fail = 0x55;

    private static Dictionary<string, string> Fields(string text)
    {
        var d = new Dictionary<string, string>();
        foreach (var line in text.Split('\n'))
        {
            int eq = line.IndexOf('=');
            if (eq > 0) d[line[..eq]] = line[(eq + 1)..];
        }
        return d;
    }

    private static ulong Hex(string s) => ulong.Parse(s, NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    /// <summary>
    /// Issue 17 item 6: a Multiboot kernel whose image and bss cover 0x8000-0x37FFF, the whole of the loader's fixed
    /// boot-data block, boots: the information, command line, memory map and stack are placed above it, and nothing the
    /// loader writes lands in the kernel's zeroed bss.
    /// </summary>
    [Theory, KvmData, SoftData]
    public void Multiboot1KernelInLowMemoryBootsWithTheBootDataMovedAboveIt(string accel)
    {
        const uint Base = 0x8000, BssEnd = Base + 0x30000;
        byte[] code = BootKit.Assemble(32, Base + 32, (a, g) =>
        {
            var bad = a.CreateLabel();
            a.cmp(eax, 0x2BADB002); a.jne(bad);
            a.mov(ebp, ebx);
            g.Print("info="); a.mov(eax, ebp); g.Hex(); g.Print("\n");
            g.Print("esp="); a.mov(eax, esp); g.Hex(); g.Print("\n");
            g.Print("cmdline="); a.mov(esi, __dword_ptr[ebp + 16]); g.Puts(); g.Print("\n");
            a.mov(edi, __dword_ptr[ebp + 24]);
            g.Print("module="); a.mov(esi, __dword_ptr[edi]); a.mov(ecx, __dword_ptr[edi + 4]); a.sub(ecx, esi); g.Putn(); g.Print("\n");
            g.Print("mmaplen="); a.mov(eax, __dword_ptr[ebp + 44]); g.Hex(); g.Print("\n");
            // Where the fixed layout would have put the memory map (0x9800) and the command line (0x20000): still bss.
            g.Print("bss="); a.mov(eax, __dword_ptr[0x9800]); a.or(eax, __dword_ptr[0x20000]); a.or(eax, __dword_ptr[BssEnd - 4]); g.Hex(); g.Print("\n");
            g.Exit(Pass);
            a.Label(ref bad);
            g.Exit(Fail);
        });
        uint flags = 0x00010003;
        var header = BootKit.Dwords(0x1BADB002, flags, unchecked(0u - 0x1BADB002u - flags), Base, Base, 0, BssEnd, Base + 32);
        var kernel = new byte[32 + code.Length];
        header.CopyTo(kernel, 0);
        code.CopyTo(kernel, 32);

        var run = BootKit.Run(accel, kernel, Encoding.ASCII.GetBytes("LOW MODULE"), "console=ttyS0");

        Assert.True(run.Stop.Error is null, $"{run.Stop.Error}; output: {run.Text}");
        var f = Fields(run.Text);
        Assert.Equal(BssEnd + KernelLoader.InfoAddress, Hex(f["info"]));
        Assert.InRange(Hex(f["esp"]), BssEnd + 0x8000, BssEnd + KernelLoader.StackTop);
        Assert.Equal("/boot/kernel console=ttyS0", f["cmdline"]);
        Assert.Equal("LOW MODULE", f["module"]);
        Assert.Equal(4ul * 24, Hex(f["mmaplen"]));
        Assert.Equal(0ul, Hex(f["bss"]));
        Assert.Equal((int)(Pass << 1 | 1), run.ExitStatus);
    }

    [Theory, KvmData, SoftData]
    public void Multiboot1AoutKernelGetsCmdlineModuleAndMemoryInfo(string accel)
    {
        const uint Base = 0x100000;
        byte[] code = BootKit.Assemble(32, Base + 32, (a, g) =>
        {
            var bad = a.CreateLabel();
            a.cmp(eax, 0x2BADB002); a.jne(bad);
            a.mov(ebp, ebx);
            g.Print("cmdline="); a.mov(esi, __dword_ptr[ebp + 16]); g.Puts(); g.Print("\n");
            a.test(__dword_ptr[ebp], 8); a.jz(bad);
            a.cmp(__dword_ptr[ebp + 20], 1); a.jne(bad);
            a.mov(edi, __dword_ptr[ebp + 24]);
            g.Print("module="); a.mov(esi, __dword_ptr[edi]); a.mov(ecx, __dword_ptr[edi + 4]); a.sub(ecx, esi); g.Putn(); g.Print("\n");
            g.Print("modstart="); a.mov(eax, __dword_ptr[edi]); g.Hex(); g.Print("\n");
            g.Print("modname="); a.mov(esi, __dword_ptr[edi + 8]); g.Puts(); g.Print("\n");
            g.Print("loader="); a.mov(esi, __dword_ptr[ebp + 64]); g.Puts(); g.Print("\n");
            g.Print("lower="); a.mov(eax, __dword_ptr[ebp + 4]); g.Hex(); g.Print("\n");
            g.Print("upper="); a.mov(eax, __dword_ptr[ebp + 8]); g.Hex(); g.Print("\n");
            g.Print("mmaplen="); a.mov(eax, __dword_ptr[ebp + 44]); g.Hex(); g.Print("\n");
            g.Print("bss="); a.mov(eax, __dword_ptr[Base + 0x1000]); g.Hex(); g.Print("\n");
            g.Exit(Pass);
            a.Label(ref bad);
            g.Exit(Fail);
        });
        // The a.out kludge header: load the whole file at 1 MiB, zero a page of bss after it, enter after the header.
        uint flags = 0x00010003;
        var header = BootKit.Dwords(0x1BADB002, flags, unchecked(0u - 0x1BADB002u - flags), Base, Base, 0, Base + 0x2000, Base + 32);
        var kernel = new byte[32 + code.Length];
        header.CopyTo(kernel, 0);
        code.CopyTo(kernel, 32);
        Assert.True(kernel.Length < 0x1000);

        var run = BootKit.Run(accel, kernel, Encoding.ASCII.GetBytes("MODULE CONTENT"), "console=ttyS0 hello", initrdName: "mod.txt");

        Assert.Equal(KernelFormat.Multiboot1, run.Kernel.Format);
        Assert.True(run.Stop.Error is null, $"{run.Stop.Error}; output: {run.Text}");
        var f = Fields(run.Text);
        Assert.Equal("/boot/kernel console=ttyS0 hello", f["cmdline"]); // the kernel's path first, as GRUB and QEMU pass it
        Assert.Equal("MODULE CONTENT", f["module"]);
        Assert.Equal(run.Kernel.InitrdAddress, Hex(f["modstart"]));
        Assert.Equal(0ul, run.Kernel.InitrdAddress & 0xfff);
        Assert.Equal("mod.txt", f["modname"]);
        Assert.Equal("hyve", f["loader"]);
        Assert.Equal(639ul, Hex(f["lower"]));                 // 0x9FC00 / 1 KiB
        Assert.Equal((32ul << 10) - 1024, Hex(f["upper"]));   // 1 MiB to the 32 MiB top, in KiB
        Assert.Equal(4ul * 24, Hex(f["mmaplen"]));            // four E820 ranges, 24 bytes each with the size field
        Assert.Equal(0ul, Hex(f["bss"]));
        Assert.Equal((int)(Pass << 1 | 1), run.ExitStatus);
    }

    [Theory, KvmData, SoftData]
    public void Multiboot2AddressTagKernelGetsTags(string accel)
    {
        const uint Base = 0x200000;
        const int HeaderLen = 16 + 24 + 16 + 8; // fixed part, address tag, entry tag (12 padded to 16), end tag
        byte[] code = BootKit.Assemble(32, Base + HeaderLen, (a, g) =>
        {
            var bad = a.CreateLabel();
            a.cmp(eax, 0x36D76289); a.jne(bad);
            a.lea(esi, __dword_ptr[ebx + 8]);
            var loop = a.CreateLabel(); var not1 = a.CreateLabel(); var not3 = a.CreateLabel(); var not4 = a.CreateLabel(); var next = a.CreateLabel(); var done = a.CreateLabel();
            a.Label(ref loop);
            a.mov(eax, __dword_ptr[esi]); a.test(eax, eax); a.jz(done);
            a.cmp(eax, 1); a.jne(not1);
            a.push(esi); a.add(esi, 8); g.Print("cmdline="); g.Puts(); g.Print("\n"); a.pop(esi); a.jmp(next);
            a.Label(ref not1);
            a.cmp(__dword_ptr[esi], 3); a.jne(not3);
            a.push(esi); g.Print("module="); a.mov(ecx, __dword_ptr[esi + 12]); a.mov(eax, __dword_ptr[esi + 8]); a.sub(ecx, eax);
            a.add(esi, 16); a.push(esi); a.mov(esi, eax); g.Putn(); g.Print("\nmodname="); a.pop(esi); g.Puts(); g.Print("\n"); a.pop(esi); a.jmp(next);
            a.Label(ref not3);
            a.cmp(__dword_ptr[esi], 4); a.jne(not4);
            g.Print("upper="); a.mov(eax, __dword_ptr[esi + 12]); g.Hex(); g.Print("\n"); a.jmp(next);
            a.Label(ref not4);
            g.Print("tag="); a.mov(eax, __dword_ptr[esi]); g.Hex(); g.Print("\n");
            a.Label(ref next);
            a.mov(eax, __dword_ptr[esi + 4]); a.add(eax, 7); a.and(eax, ~7); a.add(esi, eax); a.jmp(loop);
            a.Label(ref done);
            g.Print("total="); a.mov(eax, __dword_ptr[ebx]); g.Hex(); g.Print("\n");
            g.Exit(Pass);
            a.Label(ref bad);
            g.Exit(Fail);
        });
        uint magic = 0xE85250D6;
        var header = BootKit.Dwords(magic, 0, HeaderLen, unchecked(0u - magic - HeaderLen),
            2 | 0 << 16, 24, Base, Base, 0, 0,          // address tag: load the whole file at Base
            3, 12, Base + HeaderLen, 0,                 // entry tag (padded)
            0, 8);                                      // end tag
        Assert.Equal(HeaderLen, header.Length);
        var kernel = header.Concat(code).ToArray();

        var run = BootKit.Run(accel, kernel, Encoding.ASCII.GetBytes("MB2 MODULE"), "root=/dev/vda", initrdName: "initrd.img");

        Assert.Equal(KernelFormat.Multiboot2, run.Kernel.Format);
        Assert.True(run.Stop.Error is null, $"{run.Stop.Error}; output: {run.Text}");
        var f = Fields(run.Text);
        Assert.Equal("/boot/kernel root=/dev/vda", f["cmdline"]);
        Assert.Equal("MB2 MODULE", f["module"]);
        Assert.Equal("initrd.img", f["modname"]);
        Assert.Equal((32ul << 10) - 1024, Hex(f["upper"]));
        Assert.Contains("tag=00000002", run.Text); // boot loader name
        Assert.Contains("tag=00000006", run.Text); // memory map
        Assert.Equal((int)(Pass << 1 | 1), run.ExitStatus);
    }

    private static void ReportState32(Assembler a, GuestLib g)
    {
        // First instructions: capture ESP, EFLAGS and EIP before anything changes them.
        a.mov(edi, esp); a.pushfd(); a.pop(ebx); a.call(a.F); a.AnonymousLabel(); a.pop(ebp);
        g.Print("eip="); a.mov(eax, ebp); g.Hex(); g.Print("\n");
        g.Print("esp="); a.mov(eax, edi); g.Hex(); g.Print("\n");
        g.Print("ret="); a.mov(eax, __dword_ptr[edi]); g.Hex(); g.Print("\n");
        g.Print("eflags="); a.mov(eax, ebx); g.Hex(); g.Print("\n");
        Segments(a, g);
        g.Print("cr0="); a.mov(eax, cr0); g.Hex(); g.Print("\n");
        g.Print("cr4="); a.mov(eax, cr4); g.Hex(); g.Print("\n");
        a.sub(esp, 8); a.sgdt(__[esp + 2]);
        g.Print("gdtbase="); a.mov(eax, __dword_ptr[esp + 4]); g.Hex(); g.Print("\n");
        g.Print("gdtlimit="); a.movzx(eax, __word_ptr[esp + 2]); g.Hex(); g.Print("\n");
        a.add(esp, 8);
    }

    private static void Segments(Assembler a, GuestLib g)
    {
        foreach (var (name, seg) in new[] { ("cs", cs), ("ds", ds), ("es", es), ("ss", ss), ("fs", fs), ("gs", gs) })
        {
            g.Print(name + "="); a.xor(eax, eax); a.mov(ax, seg); g.Hex(); g.Print("\n");
        }
        g.Print("tr="); a.xor(eax, eax); a.str(ax); g.Hex(); g.Print("\n");
    }

    [Theory, KvmData, SoftData]
    public void Elf32EntersFlatProtectedMode(string accel)
    {
        const uint Entry = 0x200000;
        byte[] code = BootKit.Assemble(32, Entry, (a, g) => { ReportState32(a, g); g.Exit(Pass); });
        var run = BootKit.Run(accel, BootKit.Elf(false, Entry, Entry, code, Entry));

        Assert.Equal(KernelFormat.Elf32, run.Kernel.Format);
        Assert.True(run.Stop.Error is null, $"{run.Stop.Error}; output: {run.Text}");
        var f = Fields(run.Text);
        Assert.Equal(Entry + 9, Hex(f["eip"])); // mov edi,esp (2) + pushfd (1) + pop ebx (1) + call (5)
        Assert.Equal(KernelLoader.StackTop - 4, Hex(f["esp"]));
        Assert.Equal(0ul, Hex(f["ret"]));
        Assert.Equal(0ul, Hex(f["eflags"]) & 0x200); // IF clear
        Assert.Equal(0x10ul, Hex(f["cs"]));
        foreach (var s in new[] { "ds", "es", "ss", "fs", "gs" }) Assert.Equal(0x18ul, Hex(f[s]));
        Assert.Equal(0x20ul, Hex(f["tr"]));
        Assert.Equal(1ul, Hex(f["cr0"]) & 0x80000001); // PE on, PG off
        Assert.Equal(0ul, Hex(f["cr4"]) & 0x20);
        Assert.Equal(KernelLoader.GdtAddress, Hex(f["gdtbase"]));
        Assert.Equal(0x2ful, Hex(f["gdtlimit"]));
        Assert.Equal((int)(Pass << 1 | 1), run.ExitStatus);
    }

    [Theory, KvmData, SoftData]
    public void Elf64LinkedHighEntersLongModeAtThePhysicalEntry(string accel)
    {
        const ulong Phys = 0x200000, Virt = 0xffffffff80200000;
        byte[] code = BootKit.Assemble(64, Phys, (a, g) =>
        {
            a.mov(rdi, rsp); a.pushfq(); a.pop(rbx); a.call(a.F); a.AnonymousLabel(); a.pop(rbp);
            g.Print("rip="); a.mov(rax, rbp); g.Hex(); g.Print("\n");
            g.Print("rsp="); a.mov(rax, rdi); g.Hex(); g.Print("\n");
            g.Print("ret="); a.mov(rax, __qword_ptr[rdi]); g.Hex(); g.Print("\n");
            g.Print("rflags="); a.mov(rax, rbx); g.Hex(); g.Print("\n");
            foreach (var (name, seg) in new[] { ("cs", cs), ("ds", ds), ("ss", ss) })
            {
                g.Print(name + "="); a.xor(eax, eax); a.mov(ax, seg); g.Hex(); g.Print("\n");
            }
            g.Print("tr="); a.xor(eax, eax); a.str(ax); g.Hex(); g.Print("\n");
            g.Print("cr0="); a.mov(rax, cr0); g.Hex(); g.Print("\n");
            g.Print("cr3="); a.mov(rax, cr3); g.Hex(); g.Print("\n");
            g.Print("cr4="); a.mov(rax, cr4); g.Hex(); g.Print("\n");
            g.Print("efer="); a.mov(ecx, 0xC0000080); a.rdmsr(); a.shl(rdx, 32); a.or(rax, rdx); g.Hex(); g.Print("\n");
            // The last quadword of RAM (32 MiB) through the identity map: 2 MiB pages past the first are mapped too.
            g.Print("high="); a.mov(rax, 0x1fffff8ul); a.mov(rax, __qword_ptr[rax]); g.Hex(); g.Print("\n");
            g.Exit(Pass);
        });
        var run = BootKit.Run(accel, BootKit.Elf(true, Virt, Phys, code, Virt));

        Assert.Equal(KernelFormat.Elf64, run.Kernel.Format);
        Assert.True(run.Stop.Error is null, $"{run.Stop.Error}; output: {run.Text}");
        var f = Fields(run.Text);
        Assert.Equal(Phys + 10, Hex(f["rip"])); // mov rdi,rsp (3) + pushfq (1) + pop rbx (1) + call (5)
        Assert.Equal(KernelLoader.StackTop - 8, Hex(f["rsp"]));
        Assert.Equal(0ul, Hex(f["ret"]));
        Assert.Equal(0ul, Hex(f["rflags"]) & 0x200);
        Assert.Equal(0x10ul, Hex(f["cs"]));
        Assert.Equal(0x18ul, Hex(f["ds"]));
        Assert.Equal(0x18ul, Hex(f["ss"]));
        Assert.Equal(0x20ul, Hex(f["tr"]));
        Assert.Equal(0x80000001ul, Hex(f["cr0"]) & 0x80000001);
        Assert.Equal(KernelLoader.PageTableAddress, Hex(f["cr3"]));
        Assert.Equal(0x20ul, Hex(f["cr4"]) & 0x20);
        Assert.Equal(0x500ul, Hex(f["efer"]) & 0x500); // LME | LMA
        Assert.Equal(0ul, Hex(f["high"]));
        Assert.Equal((int)(Pass << 1 | 1), run.ExitStatus);
    }

    [Theory, KvmData, SoftData]
    public void PvhKernelGetsStartInfo(string accel)
    {
        const uint Entry = 0x100000;
        byte[] code = BootKit.Assemble(32, Entry, (a, g) =>
        {
            a.mov(ebp, ebx);
            g.Print("magic="); a.mov(eax, __dword_ptr[ebp]); g.Hex(); g.Print("\n");
            g.Print("version="); a.mov(eax, __dword_ptr[ebp + 4]); g.Hex(); g.Print("\n");
            g.Print("nrmod="); a.mov(eax, __dword_ptr[ebp + 12]); g.Hex(); g.Print("\n");
            g.Print("cmdline="); a.mov(esi, __dword_ptr[ebp + 0x18]); g.Puts(); g.Print("\n");
            a.mov(edi, __dword_ptr[ebp + 0x10]);
            g.Print("modaddr="); a.mov(eax, __dword_ptr[edi]); g.Hex(); g.Print("\n");
            g.Print("modsize="); a.mov(eax, __dword_ptr[edi + 8]); g.Hex(); g.Print("\n");
            g.Print("module="); a.mov(esi, __dword_ptr[edi]); a.mov(ecx, __dword_ptr[edi + 8]); g.Putn(); g.Print("\n");
            g.Print("cr0="); a.mov(eax, cr0); g.Hex(); g.Print("\n");
            g.Print("cs="); a.xor(eax, eax); a.mov(ax, cs); g.Hex(); g.Print("\n");
            g.Print("entries="); a.mov(ecx, __dword_ptr[ebp + 0x30]); a.mov(eax, ecx); g.Hex(); g.Print("\n");
            a.mov(esi, __dword_ptr[ebp + 0x28]);
            var loop = a.CreateLabel();
            a.Label(ref loop);
            g.Print("mm=");
            a.mov(eax, __dword_ptr[esi + 4]); g.Hex(); a.mov(eax, __dword_ptr[esi]); g.Hex(); g.Print(",");
            a.mov(eax, __dword_ptr[esi + 12]); g.Hex(); a.mov(eax, __dword_ptr[esi + 8]); g.Hex(); g.Print(",");
            a.mov(eax, __dword_ptr[esi + 16]); g.Hex(); g.Print("\n");
            a.add(esi, 24); a.dec(ecx); a.jnz(loop);
            g.Exit(Pass);
        });
        byte[] note = BootKit.Note("Xen", 18, BootKit.Dwords(Entry));
        var run = BootKit.Run(accel, BootKit.Elf(false, Entry, Entry, code, 0xdead, notes: note), Encoding.ASCII.GetBytes("PVH MODULE"), "pvh cmdline");

        Assert.Equal(KernelFormat.Pvh, run.Kernel.Format);
        Assert.Equal(new SegmentDescriptor(0, 0x67, BootCpuState.TssAccess), run.Kernel.Cpu.Tr.Descriptor);
        Assert.True(run.Stop.Error is null, $"{run.Stop.Error}; output: {run.Text}");
        var f = Fields(run.Text);
        Assert.Equal(0x336ec578ul, Hex(f["magic"]));
        Assert.Equal(1ul, Hex(f["version"]));
        Assert.Equal(1ul, Hex(f["nrmod"]));
        Assert.Equal("pvh cmdline", f["cmdline"]);
        Assert.Equal(run.Kernel.InitrdAddress, Hex(f["modaddr"]));
        Assert.Equal(((32ul << 20) - 10) & ~0xffful, run.Kernel.InitrdAddress); // as high as possible, page-aligned
        Assert.Equal(10ul, Hex(f["modsize"]));
        Assert.Equal("PVH MODULE", f["module"]);
        Assert.Equal(1ul, Hex(f["cr0"]) & 0x80000001);
        Assert.Equal(0x10ul, Hex(f["cs"]));
        Assert.Equal(4ul, Hex(f["entries"]));
        var mm = run.Text.Split('\n').Where(l => l.StartsWith("mm=")).Select(l => l[3..]).ToArray();
        Assert.Equal(new[]
        {
            "0000000000000000,000000000009fc00,00000001",
            "000000000009fc00,0000000000000400,00000002",
            "00000000000f0000,0000000000010000,00000002",
            "0000000000100000,0000000001f00000,00000001",
        }, mm);
        Assert.Equal((int)(Pass << 1 | 1), run.ExitStatus);
    }
}

/// <summary>Synthetic bzImages run on each CPU engine: the Linux boot protocol's register contract as the kernel sees it.</summary>
public class LinuxBootGuestTests
{
    private const uint Pass = 0x21;

    [Theory, KvmData, SoftData]
    public void BzImage64EntersStartup64WithBootParamsInRsi(string accel)
    {
        const ulong Load = 0x1000000;
        byte[] startup64 = BootKit.Assemble(64, Load + 0x200, (a, g) =>
        {
            g.Print("rsi="); a.mov(rax, rsi); g.Hex(); g.Print("\n");
            g.Print("loader="); a.movzx(eax, __byte_ptr[rsi + 0x210]); g.Hex(); g.Print("\n");
            g.Print("cmdline="); a.push(rsi); a.mov(esi, __dword_ptr[rsi + 0x228]); g.Puts(); a.pop(rsi); g.Print("\n");
            g.Print("e820="); a.movzx(eax, __byte_ptr[rsi + 0x1e8]); g.Hex(); g.Print("\n");
            g.Print("cs="); a.xor(eax, eax); a.mov(ax, cs); g.Hex(); g.Print("\n");
            g.Print("ds="); a.xor(eax, eax); a.mov(ax, ds); g.Hex(); g.Print("\n");
            g.Print("ss="); a.xor(eax, eax); a.mov(ax, ss); g.Hex(); g.Print("\n");
            g.Print("if="); a.pushfq(); a.pop(rax); a.and(eax, 0x200); g.Hex(); g.Print("\n");
            g.Exit(Pass);
        });
        var pm = new byte[0x200 + startup64.Length];
        Array.Fill(pm, (byte)0xf4, 0, 0x200); // the 32-bit entry: never used here
        startup64.CopyTo(pm, 0x200);

        var run = BootKit.Run(accel, KernelLoaderTests.BzImage(pm, kernel64: true), cmdline: "console=ttyS0 root=/dev/vda");

        Assert.True(run.Stop.Error is null, $"{run.Stop.Error}; output: {run.Text}");
        Assert.Contains($"rsi={KernelLoader.InfoAddress:x16}\n", run.Text);
        Assert.Contains("loader=00000000000000ff\n", run.Text);
        Assert.Contains("cmdline=console=ttyS0 root=/dev/vda\n", run.Text);
        Assert.Contains("e820=0000000000000004\n", run.Text);
        Assert.Contains("cs=0000000000000010\n", run.Text);
        Assert.Contains("ds=0000000000000018\n", run.Text);
        Assert.Contains("ss=0000000000000018\n", run.Text);
        Assert.Contains("if=0000000000000000\n", run.Text);
        Assert.Equal((int)(Pass << 1 | 1), run.ExitStatus);
    }

    [Theory, KvmData, SoftData]
    public void BzImage32EntersCode32WithEsiAndZeroedEbpEdiEbx(string accel)
    {
        byte[] pm = BootKit.Assemble(32, 0x1000000, (a, g) =>
        {
            g.Print("esi="); a.mov(eax, esi); g.Hex(); g.Print("\n");
            g.Print("zero="); a.mov(eax, ebp); a.or(eax, edi); a.or(eax, ebx); g.Hex(); g.Print("\n");
            g.Print("code32="); a.mov(eax, __dword_ptr[esi + 0x214]); g.Hex(); g.Print("\n");
            g.Print("cs="); a.xor(eax, eax); a.mov(ax, cs); g.Hex(); g.Print("\n");
            g.Print("es="); a.xor(eax, eax); a.mov(ax, es); g.Hex(); g.Print("\n");
            g.Print("cr0="); a.mov(eax, cr0); g.Hex(); g.Print("\n");
            g.Exit(Pass);
        });
        var run = BootKit.Run(accel, KernelLoaderTests.BzImage(pm, kernel64: false));

        Assert.True(run.Stop.Error is null, $"{run.Stop.Error}; output: {run.Text}");
        Assert.Contains($"esi={KernelLoader.InfoAddress:x8}\n", run.Text);
        Assert.Contains("zero=00000000\n", run.Text);
        Assert.Contains("code32=01000000\n", run.Text);
        Assert.Contains("cs=00000010\n", run.Text);
        Assert.Contains("es=00000018\n", run.Text);
        Assert.Matches("cr0=[0-9a-f]{7}[13579bdf]\n", run.Text); // PE set; paging (bit 31) checked below
        Assert.DoesNotContain("cr0=8", run.Text);
        Assert.Equal((int)(Pass << 1 | 1), run.ExitStatus);
    }
}
