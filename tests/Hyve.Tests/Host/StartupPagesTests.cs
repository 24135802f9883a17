// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using Hyve.Vmm.Native;
using Xunit;

namespace Hyve.Tests.Host;

/// <summary>The start-up trim drops clean read-only file mappings and keeps every private copy.</summary>
public unsafe class StartupPagesTests
{
    private const int Length = 256 * 1024;
    private const int ProtRead = 1, ProtWrite = 2, MapPrivate = 2;

    [Fact]
    public void CleanReadOnlyFilePagesLeaveTheResidentSetAndPrivateCopiesStay()
    {
        string path = Path.Combine(Path.GetTempPath(), $"hyve-trim-{Guid.NewGuid():N}");
        var content = new byte[Length];
        for (int i = 0; i < content.Length; i++) content[i] = (byte)(i * 7);
        File.WriteAllBytes(path, content);
        int fd = Libc.Open(path, 0);
        Assert.True(fd >= 0);
        nint clean = Libc.Mmap(0, Length, ProtRead, MapPrivate, fd, 0);
        nint copied = Libc.Mmap(0, Length, ProtRead | ProtWrite, MapPrivate, fd, 0);
        Libc.Close(fd);
        try
        {
            Assert.NotEqual(-1, clean);
            Assert.NotEqual(-1, copied);
            int sum = 0;
            for (int i = 0; i < Length; i += 4096) sum += ((byte*)clean)[i];
            // A private copy made read-only afterwards, as the loader does with relocated data (RELRO).
            for (int i = 0; i < Length; i += 4096) ((byte*)copied)[i] = 0xA5;
            Assert.Equal(0, Mprotect(copied, Length, ProtRead));
            Assert.Equal(Length / 1024, ResidentKib(clean));

            Assert.True(StartupPages.Trim() >= Length / 1024);

            Assert.Equal(0, ResidentKib(clean));
            for (int i = 0; i < Length; i += 4096) Assert.Equal((byte)0xA5, ((byte*)copied)[i]);
            // Dropped pages read back from the file unchanged.
            for (int i = 0; i < Length; i += 4093) Assert.Equal(content[i], ((byte*)clean)[i]);
            Assert.True(sum >= 0);
        }
        finally
        {
            Libc.Munmap(clean, Length);
            Libc.Munmap(copied, Length);
            File.Delete(path);
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mprotect")]
    private static extern int Mprotect(nint addr, nuint length, int prot);

    private static long ResidentKib(nint start)
    {
        string head = ((long)start).ToString("x", CultureInfo.InvariantCulture) + "-";
        bool inside = false;
        foreach (string line in File.ReadLines("/proc/self/smaps"))
        {
            if (line.StartsWith(head, StringComparison.Ordinal)) inside = true;
            else if (inside && line.StartsWith("Rss:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
        }
        throw new InvalidOperationException("mapping not found in /proc/self/smaps");
    }
}
